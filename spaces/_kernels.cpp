// Compiled time loops for the structured LSTM recurrences of spaces/_recurrence.py.
//
// The Python versions of these loops issue ~8 small ATen calls a step forward and ~8 backward; at
// hidden 256 their dispatch cost (5-20 us each) is as large as the step's arithmetic. Here a step is
// ONE matmul call (two for F-LSTM) plus one fused, vectorised element-wise pass written in C++, the
// same maths in the same order as the Python code (which stays the fallback and the specification).
//
// Layouts follow _recurrence.py exactly: group-major buffers (G, T(+1), N, .) for the linear
// recurrence, time-major (T(+1), N, .) for the bottleneck one. Gate columns are i, f, g, o.
//
// Ops (registered as torch.ops.squeezelstm_kernels.*; the Python wrappers own autograd):
//   linear_forward(xw, h0, c0, keep?, bias?, w, wx?)        -> (hs, cs, tcs, acts)   (wx: xw is x, see there)
//   linear_backward(d_out?, d_hn?, d_cn?, hs, cs, tcs, acts, keep?, w, need_dh0, need_dbias)
//                                                           -> (dgates, dh0, dc0, dbias or undefined)
//   bottleneck_forward(xz, h0, c0, a, b, bias?)             -> (hs, cs, tcs, acts, zs)
//   bottleneck_backward(d_out?, d_hn?, d_cn?, hs, cs, tcs, acts, a, b, need_dh0, need_dbias)
//                                                           -> (dgates, dzs, dh0, dc0, dbias or undefined)
//   hidden_forward(xw, h0, c0, bias?, w, router_w, router_b?, noise?, tau)
//                                                           -> (hs, cs, acts, tcs, cands, soft, choice)
//   hidden_backward(d_out?, d_hn?, d_cn?, hs, cs, acts, tcs, cands, soft?, choice, dest, w, router_w, tau, need_dh0)
//                                                           -> (dgates (compacted), dlogits or undefined, dh0, dc0)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

using at::Tensor;

namespace {

// ---- activations ------------------------------------------------------------------------------
// float: branch-free polynomial approximations (Cephes expf / tanhf, ~1-2 ulp) that the compiler
// vectorises; libm's expf/tanhf are scalar calls that would cost more than the whole matmul of a
// small step. double (used by the tests' tight checks) keeps libm.

// Built with -fno-trapping-math (so the selects below if-convert) and the CPU's vector ISA
// (see _kernels.py); written with min/max/floor/copysign so gcc vectorises the whole gate loop.
inline float exp_approx(float x) {
  x = std::min(x, 88.3762626647949f);
  x = std::max(x, -87.3365447505531f);  // keeps 2^n a normal float
#if defined(__SSE4_1__) || defined(__AVX__)
  float fx = std::floor(x * 1.44269504088896341f + 0.5f);  // one vroundps
#else
  // SSE2 has no vector floor: truncate, then step down where truncation rounded up.
  float fx = x * 1.44269504088896341f + 0.5f;
  float tr = static_cast<float>(static_cast<int32_t>(fx));
  fx = tr > fx ? tr - 1.0f : tr;
#endif
  x = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  float z = x * x;
  float y = 1.9875691500E-4f;
  y = y * x + 1.3981999507E-3f;
  y = y * x + 8.3334519073E-3f;
  y = y * x + 4.1665795894E-2f;
  y = y * x + 1.6666665459E-1f;
  y = y * x + 5.0000001201E-1f;
  y = y * z + x + 1.0f;
  int32_t n = static_cast<int32_t>(fx);
  int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

inline float tanh_f(float x) {
  float ax = std::fabs(x);
  // |x| < 0.625: odd polynomial (no cancellation near 0); otherwise 1 - 2 / (e^{2|x|} + 1).
  float z = x * x;
  float p = -5.70498872745E-3f;
  p = p * z + 2.06390887954E-2f;
  p = p * z - 5.37397155531E-2f;
  p = p * z + 1.33314422036E-1f;
  p = p * z - 3.33332819422E-1f;
  float small = p * z * x + x;
  float big = std::copysign(1.0f - 2.0f / (exp_approx(2.0f * ax) + 1.0f), x);
  return ax < 0.625f ? small : big;
}

inline double sigmoid_f(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_f(double x) { return std::tanh(x); }

// ---- one element-wise step over a block of units ------------------------------------------------
// Forward: pre-activations are `x + b + m` (4s each: the input side, the bias, the recurrent matmul);
// writes the activations to `a`. No pointer may be null: a conditional load would stop the vectorisation.
template <typename T>
inline void cell_forward_row(const T* __restrict x, const T* __restrict b, const T* __restrict m, T* __restrict a,
                             const T* __restrict c_prev, const T* __restrict h_prev, T* __restrict c,
                             T* __restrict tc, T* __restrict h, int64_t s, bool keep) {
  if (!keep) {  // hard routing: this unit block keeps its state this step (the backward reads no a/tc here)
    for (int64_t j = 0; j < s; ++j) {
      c[j] = c_prev[j];
      h[j] = h_prev[j];
    }
    std::memset(a, 0, 4 * s * sizeof(T));
    std::memset(tc, 0, s * sizeof(T));
    return;
  }
  T* ai = a;
  T* af = a + s;
  T* ag = a + 2 * s;
  T* ao = a + 3 * s;
  for (int64_t j = 0; j < s; ++j) {
    T i = sigmoid_f(x[j] + b[j] + m[j]);
    T f = sigmoid_f(x[s + j] + b[s + j] + m[s + j]);
    T g = tanh_f(x[2 * s + j] + b[2 * s + j] + m[2 * s + j]);
    T o = sigmoid_f(x[3 * s + j] + b[3 * s + j] + m[3 * s + j]);
    ai[j] = i;
    af[j] = f;
    ag[j] = g;
    ao[j] = o;
    T cj = f * c_prev[j] + i * g;
    T tcj = tanh_f(cj);
    c[j] = cj;
    tc[j] = tcj;
    h[j] = o * tcj;
  }
}

#if defined(__AVX512F__)
// float32 with AVX-512: the same step written with intrinsics, because gcc turns the scalar code's
// five 1/x a unit into vdivps (~18 cycles each per 16 lanes here, ~40% of the pass); these use a
// reciprocal estimate plus one Newton step instead (~1 ulp). The tail of a row is masked.
#include <immintrin.h>

// Vector forms of exp_approx / sigmoid_f / tanh_f above (same polynomials and clamps; 1/x as a
// 14-bit reciprocal estimate plus one Newton step, ~1 ulp, instead of a vdivps). min/max put x
// second so that a NaN passes through, as std::min/max do in the scalar code.
inline __m512 exp_v(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(88.3762626647949f), x);
  x = _mm512_max_ps(_mm512_set1_ps(-87.3365447505531f), x);
  __m512 fx = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                   _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fmadd_ps(fx, _mm512_set1_ps(2.12194440e-4f), x);
  __m512 z = _mm512_mul_ps(x, x);
  __m512 y = _mm512_set1_ps(1.9875691500E-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507E-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073E-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894E-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201E-1f));
  y = _mm512_add_ps(_mm512_fmadd_ps(y, z, x), _mm512_set1_ps(1.0f));
  __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
}

inline __m512 recip_v(__m512 d) {  // d >= 1 here: no zero or denormal inputs
  __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

inline __m512 sigmoid_v(__m512 x) {
  return recip_v(_mm512_add_ps(_mm512_set1_ps(1.0f), exp_v(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

inline __m512 tanh_v(__m512 x) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  __m512 ax = _mm512_andnot_ps(sign, x);
  __m512 z = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(-5.70498872745E-3f);
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954E-2f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531E-2f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036E-1f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422E-1f));
  __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
  __m512 e = exp_v(_mm512_add_ps(ax, ax));
  __m512 big = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), recip_v(_mm512_add_ps(e, _mm512_set1_ps(1.0f))),
                                _mm512_set1_ps(1.0f));
  big = _mm512_or_ps(big, _mm512_and_ps(sign, x));  // big >= 0: copysign
  // ax < 0.625 is false for NaN, and big is NaN then too
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_LT_OQ), big, small);
}

inline void cell_forward_row(const float* __restrict x, const float* __restrict b, const float* __restrict m,
                             float* __restrict a, const float* __restrict c_prev, const float* __restrict h_prev,
                             float* __restrict c, float* __restrict tc, float* __restrict h, int64_t s, bool keep) {
  if (!keep) {  // hard routing: this unit block keeps its state this step (the backward reads no a/tc here)
    std::memcpy(c, c_prev, s * sizeof(float));
    std::memcpy(h, h_prev, s * sizeof(float));
    std::memset(a, 0, 4 * s * sizeof(float));
    std::memset(tc, 0, s * sizeof(float));
    return;
  }
  for (int64_t j = 0; j < s; j += 16) {
    const __mmask16 k = s - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (s - j)) - 1);
    __m512 pre[4];
    for (int64_t q = 0; q < 4; ++q) {
      const int64_t e = q * s + j;
      pre[q] = _mm512_add_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(k, x + e), _mm512_maskz_loadu_ps(k, b + e)),
                             _mm512_maskz_loadu_ps(k, m + e));
    }
    const __m512 i = sigmoid_v(pre[0]), f = sigmoid_v(pre[1]), g = tanh_v(pre[2]), o = sigmoid_v(pre[3]);
    _mm512_mask_storeu_ps(a + j, k, i);
    _mm512_mask_storeu_ps(a + s + j, k, f);
    _mm512_mask_storeu_ps(a + 2 * s + j, k, g);
    _mm512_mask_storeu_ps(a + 3 * s + j, k, o);
    const __m512 cp = _mm512_maskz_loadu_ps(k, c_prev + j);
    const __m512 cj = _mm512_fmadd_ps(f, cp, _mm512_mul_ps(i, g));
    const __m512 tcj = tanh_v(cj);
    _mm512_mask_storeu_ps(tc + j, k, tcj);
    _mm512_mask_storeu_ps(c + j, k, cj);
    _mm512_mask_storeu_ps(h + j, k, _mm512_mul_ps(o, tcj));
  }
}
#endif

// Backward: dh (in: gradient reaching h_t from later steps, without d_out), dout (this step's output
// gradient; zeros when the output is unused: never null, as above), dc (in: gradient reaching c_t; out: gradient w.r.t. c_{t-1}); writes the
// pre-activation gradient into dg and the part of dL/dh_{t-1} that bypasses the matmul into dh
// (zero for an updated block, the whole incoming gradient for a kept one).
template <typename T>
inline void cell_backward_row(T* __restrict dh, const T* __restrict dout, T* __restrict dc,
                              const T* __restrict a, const T* __restrict c_prev, const T* __restrict tc,
                              T* __restrict dg, int64_t s, bool keep) {
  const T* ai = a;
  const T* af = a + s;
  const T* ag = a + 2 * s;
  const T* ao = a + 3 * s;
  if (!keep) {
    for (int64_t j = 0; j < s; ++j) {
      dh[j] = dh[j] + dout[j];
      dg[j] = dg[s + j] = dg[2 * s + j] = dg[3 * s + j] = T(0);
    }
    return;
  }
  for (int64_t j = 0; j < s; ++j) {
    T dht = dh[j] + dout[j];
    T i = ai[j], f = af[j], g = ag[j], o = ao[j], t = tc[j];
    T dct = dc[j] + dht * (o * (T(1) - t * t));
    dg[j] = dct * (g * (i - i * i));
    dg[s + j] = dct * (c_prev[j] * (f - f * f));
    dg[2 * s + j] = dct * (i * (T(1) - g * g));
    dg[3 * s + j] = dht * (t * (o - o * o));
    dc[j] = dct * f;
    dh[j] = T(0);
  }
}

// The bias gradient (the sum of dgates over steps and sequences) is summed in the backward loops while
// each dgates row is still in L1, instead of a second pass over the whole window (~0.4 ms of ~20 at
// n = 256); one partial sum per thread chunk, as two chunks may share a group.
template <typename T>
inline void add_row(T* __restrict acc, const T* __restrict row, int64_t len) {
  for (int64_t j = 0; j < len; ++j) acc[j] += row[j];
}

// ---- matmul without the dispatcher ---------------------------------------------------------------
// A step's matmul through at::bmm_out / at::mm_out costs ~4-9 us of dispatch, view and check overhead a
// call here, 6-14% of the matmul itself at n = 256 and more below. The BLAS torch links (MKL or
// OpenBLAS, which export the Fortran sgemm_/dgemm_) is called directly instead when the process has
// it; otherwise (or with SQUEEZELSTM_DIRECT_GEMM=0, which the tests use to cover both) the ATen calls
// remain. Integer arguments are passed as pointers to 64-bit values: on a
// little-endian machine that reads right for both 32-bit (LP64) and 64-bit (ILP64) BLAS builds.
template <typename T>
using gemm_fn = void (*)(const char*, const char*, const int64_t*, const int64_t*, const int64_t*, const T*, const T*,
                         const int64_t*, const T*, const int64_t*, const T*, T*, const int64_t*);

template <typename T>
gemm_fn<T> find_gemm() {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  const char* name = std::is_same<T, float>::value ? "sgemm_" : "dgemm_";
  void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  void* sym = lib ? dlsym(lib, name) : nullptr;
  if (!sym) sym = dlsym(RTLD_DEFAULT, name);
  return reinterpret_cast<gemm_fn<T>>(sym);
#else
  return nullptr;
#endif
}

template <typename T>
gemm_fn<T> direct_gemm() {
  static const gemm_fn<T> fn = find_gemm<T>();
  const char* env = std::getenv("SQUEEZELSTM_DIRECT_GEMM");  // read per call: tests switch it
  if (env && env[0] == '0') return nullptr;
  return fn;
}

// Row-major C (M, N) = A (M, K) B (K, N) + beta C, leading dimensions in elements: column-major BLAS
// computes C^T = B^T A^T with the same buffers.
template <typename T>
inline void gemm_rows(gemm_fn<T> fn, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
                      T beta, T* C, int64_t ldc) {
  const T one = 1;
  fn("N", "N", &N, &M, &K, &one, B, &ldb, A, &lda, &beta, C, &ldc);
}

// ---- threading -------------------------------------------------------------------------------
// Groups (G-LSTM groups, routed sub-cells) and sequences are independent through the whole window,
// so each thread runs the complete time loop of its own block of (group, sequence) lanes: no
// barrier a step, and each thread's small matmuls and gate passes run back to back. Splitting over
// groups keeps each matmul's row count (the batch); the batch is split only when the groups do not
// divide among the threads.

struct Chunk {
  int64_t g0, g1, n0, n1;
};

constexpr int64_t kMinParallelElements = 16384;  // gate elements a step below which threads do not pay

std::vector<Chunk> plan_chunks(int64_t G, int64_t N, int64_t S4) {
  int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (G * N * S4 < kMinParallelElements) threads = 1;
  std::vector<Chunk> chunks;
  if (threads <= 1) {
    chunks.push_back({0, G, 0, N});
  } else if (G % threads == 0) {
    for (int64_t i = 0; i < threads; ++i) chunks.push_back({i * G / threads, (i + 1) * G / threads, 0, N});
  } else {
    const int64_t parts = std::min(threads, N);
    for (int64_t i = 0; i < parts; ++i) chunks.push_back({0, G, i * N / parts, (i + 1) * N / parts});
  }
  return chunks;
}

template <typename F>
void for_each_chunk(const std::vector<Chunk>& chunks, const F& run) {
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    at::NoGradGuard no_grad;  // grad mode is thread-local: worker threads start with it on
    for (int64_t i = lo; i < hi; ++i) run(chunks[i]);
  });
}

// With a keep mask, a step's matmul only needs the rows up to the chunk's last updated one (the others
// keep their state, and their gate gradients are zero). Callers that order sequences so the updated
// ones come first (token routing sorts them by how often each sub-cell is chosen) skip most padding.
inline int64_t rows_in_use(const bool* kd, int64_t row0, int64_t rows) {
  if (!kd) return rows;
  int64_t used = rows;
  while (used > 0 && !kd[row0 + used - 1]) --used;
  return used;
}

void check_float(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name, " must be float32 or float64");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// ---- G-LSTM / hard-routed sub-cells: pre_t = xw_t + b + h_{t-1} W, batched over groups ----------

// With `wx` (G, m/G, 4s) given, `xw` is the layer input x (T, N, m) itself and each step's input side
// x_t^(g) W^x_g is one more matmul per group into the scratch (no (G, T, N, 4s) buffer written and read
// back); without it, `xw` is that precomputed buffer.
std::tuple<Tensor, Tensor, Tensor, Tensor> linear_forward(const Tensor& xw, const Tensor& h0, const Tensor& c0,
                                                          const std::optional<Tensor>& keep,
                                                          const std::optional<Tensor>& bias, const Tensor& w_in,
                                                          const std::optional<Tensor>& wx_in) {
  check_float(xw, "xw");
  const bool fused_x = wx_in.has_value();
  TORCH_CHECK(!fused_x || (!keep.has_value() && xw.dim() == 3), "linear_forward: wx takes x (T, N, m) and no keep");
  const int64_t G = h0.size(0), s = h0.size(2), S4 = 4 * s;
  const int64_t T = fused_x ? xw.size(0) : xw.size(1), N = fused_x ? xw.size(1) : xw.size(2);
  const int64_t mg = fused_x ? wx_in->size(1) : 0, m_in = G * mg;
  at::NoGradGuard no_grad;
  const Tensor w = w_in.detach().contiguous();
  const Tensor wx = fused_x ? wx_in->detach().contiguous() : Tensor();
  Tensor hs = at::empty({G, T + 1, N, s}, xw.options());
  Tensor cs = at::empty_like(hs);
  Tensor tcs = at::empty({G, T, N, s}, xw.options());
  Tensor acts = at::empty({G, T, N, S4}, xw.options());
  Tensor zero_row = at::zeros({S4}, xw.options());
  hs.select(1, 0).copy_(h0);
  cs.select(1, 0).copy_(c0);
  Tensor kp = keep.has_value() ? keep->to(at::kBool).contiguous() : Tensor();
  const bool* kd = kp.defined() ? kp.data_ptr<bool>() : nullptr;  // (G, T, N, 1)
  // (G, 4s): a broadcast bias in baddbmm costs more than the whole input projection; added here.
  Tensor bias_c = bias.has_value() ? bias->detach().reshape({G, S4}).contiguous() : at::zeros({G, S4}, xw.options());
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "linear_forward", [&] {
    scalar_t* A = acts.data_ptr<scalar_t>();
    scalar_t* H = hs.data_ptr<scalar_t>();
    scalar_t* C = cs.data_ptr<scalar_t>();
    scalar_t* TC = tcs.data_ptr<scalar_t>();
    const scalar_t* X = xw.data_ptr<scalar_t>();
    const scalar_t* BI = bias_c.data_ptr<scalar_t>();
    const scalar_t* W = w.data_ptr<scalar_t>();
    const scalar_t* WX = fused_x ? wx.data_ptr<scalar_t>() : nullptr;
    const scalar_t* ZR = zero_row.data_ptr<scalar_t>();
    const gemm_fn<scalar_t> gemm = direct_gemm<scalar_t>();
    for_each_chunk(plan_chunks(G, N, S4), [&](const Chunk& ch) {
      const int64_t Gc = ch.g1 - ch.g0, Nc = ch.n1 - ch.n0;
      // The recurrent matmul goes to a contiguous scratch (bmm into a strided slice, or baddbmm, costs
      // 50% more at these sizes); input side and bias are added in the element-wise pass.
      Tensor m = at::empty({Gc, Nc, S4}, xw.options());
      scalar_t* M = m.data_ptr<scalar_t>();
      const Tensor wc = w.narrow(0, ch.g0, Gc);
      const Tensor hc = hs.narrow(0, ch.g0, Gc).narrow(2, ch.n0, Nc);
      for (int64_t t = 0; t < T; ++t) {
        if (fused_x) {
          for (int64_t g = ch.g0; g < ch.g1; ++g) {
            scalar_t* Mg = M + (g - ch.g0) * Nc * S4;
            if (gemm) {
              gemm_rows(gemm, Nc, S4, mg, X + (t * N + ch.n0) * m_in + g * mg, m_in, WX + g * mg * S4, S4, scalar_t(0),
                        Mg, S4);
              gemm_rows(gemm, Nc, S4, s, H + ((g * (T + 1) + t) * N + ch.n0) * s, s, W + g * s * S4, S4, scalar_t(1),
                        Mg, S4);
            } else {
              Tensor mg_out = m.select(0, g - ch.g0);
              at::mm_out(mg_out, xw.select(0, t).narrow(0, ch.n0, Nc).narrow(1, g * mg, mg), wx.select(0, g));
              mg_out.addmm_(hs.select(0, g).select(0, t).narrow(0, ch.n0, Nc), w.select(0, g));
            }
          }
        } else if (gemm) {
          for (int64_t g = ch.g0; g < ch.g1; ++g) {
            const int64_t rows = rows_in_use(kd, (g * T + t) * N + ch.n0, Nc);
            if (rows > 0)
              gemm_rows(gemm, rows, S4, s, H + ((g * (T + 1) + t) * N + ch.n0) * s, s, W + g * s * S4, S4,
                        scalar_t(0), M + (g - ch.g0) * Nc * S4, S4);
          }
        } else {
          at::bmm_out(m, hc.select(1, t), wc);
        }
        for (int64_t g = ch.g0; g < ch.g1; ++g) {
          for (int64_t n = ch.n0; n < ch.n1; ++n) {
            const int64_t local = (g - ch.g0) * Nc + (n - ch.n0);
            const int64_t st = ((g * (T + 1) + t) * N + n) * s;  // hs/cs at step t
            const int64_t nx = st + N * s;                         // hs/cs at step t + 1
            const int64_t row = (g * T + t) * N + n;
            cell_forward_row(fused_x ? ZR : X + row * S4, BI + g * S4, M + local * S4, A + row * S4, C + st, H + st,
                             C + nx, TC + row * s, H + nx, s, kd ? kd[row] : true);
          }
        }
      }
    });
  });
  return {hs, cs, tcs, acts};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> linear_backward(const std::optional<Tensor>& d_out,
                                                           const std::optional<Tensor>& d_hn,
                                                           const std::optional<Tensor>& d_cn, const Tensor& hs,
                                                           const Tensor& cs, const Tensor& tcs, const Tensor& acts,
                                                           const std::optional<Tensor>& keep, const Tensor& w,
                                                           bool need_dh0, bool need_dbias) {
  const int64_t G = acts.size(0), T = acts.size(1), N = acts.size(2), S4 = acts.size(3), s = S4 / 4;
  at::NoGradGuard no_grad;
  Tensor dh = d_hn.has_value() ? d_hn->contiguous().clone() : at::zeros({G, N, s}, acts.options());
  Tensor dc = d_cn.has_value() ? d_cn->contiguous().clone() : at::zeros({G, N, s}, acts.options());
  Tensor dout = d_out.has_value() ? d_out->contiguous() : at::zeros({T, N, G * s}, acts.options());
  Tensor dgates = at::empty_like(acts);
  // bmm with a transposed view is ~50% slower here; w is usually the transpose of a contiguous
  // weight, so this is no copy
  Tensor wt = w.detach().transpose(1, 2).contiguous();
  Tensor kp = keep.has_value() ? keep->to(at::kBool).contiguous() : Tensor();
  const bool* kd = kp.defined() ? kp.data_ptr<bool>() : nullptr;
  const std::vector<Chunk> chunks = plan_chunks(G, N, S4);
  Tensor dbias_parts = at::zeros({need_dbias ? static_cast<int64_t>(chunks.size()) : 0, G, S4}, acts.options());
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "linear_backward", [&] {
    const scalar_t* A = acts.data_ptr<scalar_t>();
    const scalar_t* C = cs.data_ptr<scalar_t>();
    const scalar_t* TC = tcs.data_ptr<scalar_t>();
    const scalar_t* DO = dout.data_ptr<scalar_t>();
    scalar_t* DG = dgates.data_ptr<scalar_t>();
    const scalar_t* WT = wt.data_ptr<scalar_t>();
    const gemm_fn<scalar_t> gemm = direct_gemm<scalar_t>();
    for_each_chunk(chunks, [&](const Chunk& ch) {
      const int64_t Gc = ch.g1 - ch.g0, Nc = ch.n1 - ch.n0;
      scalar_t* DB = need_dbias ? dbias_parts.data_ptr<scalar_t>() + (&ch - chunks.data()) * G * S4 : nullptr;
      Tensor dh_full = dh.narrow(0, ch.g0, Gc).narrow(1, ch.n0, Nc);
      Tensor dc_full = dc.narrow(0, ch.g0, Gc).narrow(1, ch.n0, Nc);
      // this chunk's running gradients: one contiguous copy each (contiguous() then clone() would copy twice)
      Tensor dhc = dh_full.clone(at::MemoryFormat::Contiguous), dcc = dc_full.clone(at::MemoryFormat::Contiguous);
      scalar_t* DH = dhc.data_ptr<scalar_t>();
      scalar_t* DC = dcc.data_ptr<scalar_t>();
      const Tensor wtc = wt.narrow(0, ch.g0, Gc);
      const Tensor dgc = dgates.narrow(0, ch.g0, Gc).narrow(2, ch.n0, Nc);
      for (int64_t t = T - 1; t >= 0; --t) {
        for (int64_t g = ch.g0; g < ch.g1; ++g) {
          for (int64_t n = ch.n0; n < ch.n1; ++n) {
            const int64_t local = (g - ch.g0) * Nc + (n - ch.n0);
            const int64_t row = (g * T + t) * N + n;
            cell_backward_row(DH + local * s, DO + (t * N + n) * G * s + g * s, DC + local * s, A + row * S4,
                              C + ((g * (T + 1) + t) * N + n) * s, TC + row * s, DG + row * S4, s,
                              kd ? kd[row] : true);
            if (DB) add_row(DB + g * S4, DG + row * S4, S4);
          }
        }
        if ((t > 0 || need_dh0) && gemm) {
          for (int64_t g = ch.g0; g < ch.g1; ++g) {  // dhc holds the bypass of kept blocks: beta = 1
            const int64_t rows = rows_in_use(kd, (g * T + t) * N + ch.n0, Nc);
            if (rows > 0)
              gemm_rows(gemm, rows, s, S4, DG + ((g * T + t) * N + ch.n0) * S4, S4, WT + g * S4 * s, s,
                        scalar_t(kd ? 1 : 0), DH + (g - ch.g0) * Nc * s, s);
          }
        } else if (t > 0 || need_dh0) {
          if (kd) {
            dhc.baddbmm_(dgc.select(1, t), wtc);  // dhc holds the bypass of kept blocks
          } else {
            at::bmm_out(dhc, dgc.select(1, t), wtc);
          }
        }
      }
      dh_full.copy_(dhc);
      dc_full.copy_(dcc);
    });
  });
  return {dgates, dh, dc, need_dbias ? dbias_parts.sum(0) : Tensor()};
}

// ---- F-LSTM: z_t = xz_t + h_{t-1} A, pre_t = z_t B + b (threads split the batch) -----------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bottleneck_forward(const Tensor& xz, const Tensor& h0, const Tensor& c0,
                                                                      const Tensor& a_in, const Tensor& b_in,
                                                                      const std::optional<Tensor>& bias) {
  check_float(xz, "xz");
  const int64_t T = xz.size(0), N = xz.size(1), rank = xz.size(2), n = h0.size(-1), S4 = 4 * n;
  at::NoGradGuard no_grad;
  const Tensor a = a_in.detach().contiguous(), b = b_in.detach().contiguous();
  Tensor hs = at::empty({T + 1, N, n}, xz.options());
  Tensor cs = at::empty_like(hs);
  Tensor tcs = at::empty({T, N, n}, xz.options());
  Tensor zs = at::empty_like(xz);
  Tensor acts = at::empty({T, N, S4}, xz.options());
  hs.select(0, 0).copy_(h0);
  cs.select(0, 0).copy_(c0);
  Tensor bias_c = bias.has_value() ? bias->detach().contiguous() : at::zeros({S4}, xz.options());
  Tensor zero = at::zeros({S4}, xz.options());
  AT_DISPATCH_FLOATING_TYPES(xz.scalar_type(), "bottleneck_forward", [&] {
    scalar_t* A = acts.data_ptr<scalar_t>();
    scalar_t* H = hs.data_ptr<scalar_t>();
    scalar_t* C = cs.data_ptr<scalar_t>();
    scalar_t* TC = tcs.data_ptr<scalar_t>();
    const scalar_t* B = bias_c.data_ptr<scalar_t>();
    const scalar_t* Z0 = zero.data_ptr<scalar_t>();
    const scalar_t* XZ0 = xz.data_ptr<scalar_t>();
    const scalar_t* AW = a.data_ptr<scalar_t>();
    const scalar_t* BW = b.data_ptr<scalar_t>();
    scalar_t* ZS = zs.data_ptr<scalar_t>();
    const gemm_fn<scalar_t> gemm = direct_gemm<scalar_t>();
    for_each_chunk(plan_chunks(1, N, S4), [&](const Chunk& ch) {
      const int64_t Nc = ch.n1 - ch.n0;
      Tensor m = at::empty({Nc, S4}, xz.options());
      scalar_t* M = m.data_ptr<scalar_t>();
      for (int64_t t = 0; t < T; ++t) {
        scalar_t* Z = ZS + (t * N + ch.n0) * rank;  // contiguous rows
        if (gemm) {
          gemm_rows(gemm, Nc, rank, n, H + (t * N + ch.n0) * n, n, AW, rank, scalar_t(0), Z, rank);
        } else {
          Tensor z = zs.select(0, t).narrow(0, ch.n0, Nc);
          at::mm_out(z, hs.select(0, t).narrow(0, ch.n0, Nc), a);
        }
        // z += xz_t here: addmm costs more than mm at these sizes
        const scalar_t* XZ = XZ0 + (t * N + ch.n0) * rank;
        for (int64_t e = 0; e < Nc * rank; ++e) Z[e] += XZ[e];
        if (gemm) {
          gemm_rows(gemm, Nc, S4, rank, Z, rank, BW, S4, scalar_t(0), M, S4);
        } else {
          at::mm_out(m, zs.select(0, t).narrow(0, ch.n0, Nc), b);
        }
        for (int64_t r = ch.n0; r < ch.n1; ++r) {
          const int64_t st = (t * N + r) * n;
          cell_forward_row(B, Z0, M + (r - ch.n0) * S4, A + (t * N + r) * S4, C + st, H + st, C + st + N * n,
                           TC + st, H + st + N * n, n, true);
        }
      }
    });
  });
  return {hs, cs, tcs, acts, zs};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bottleneck_backward(const std::optional<Tensor>& d_out,
                                                                       const std::optional<Tensor>& d_hn,
                                                                       const std::optional<Tensor>& d_cn,
                                                                       const Tensor& hs, const Tensor& cs,
                                                                       const Tensor& tcs, const Tensor& acts,
                                                                       const Tensor& a, const Tensor& b, bool need_dh0,
                                                                       bool need_dbias) {
  const int64_t T = acts.size(0), N = acts.size(1), S4 = acts.size(2), n = S4 / 4, rank = a.size(1);
  at::NoGradGuard no_grad;
  Tensor dh = d_hn.has_value() ? d_hn->contiguous().clone() : at::zeros({N, n}, acts.options());
  Tensor dc = d_cn.has_value() ? d_cn->contiguous().clone() : at::zeros({N, n}, acts.options());
  Tensor dout = d_out.has_value() ? d_out->contiguous() : at::zeros({T, N, n}, acts.options());
  Tensor dgates = at::empty_like(acts);
  Tensor dzs = at::empty({T, N, rank}, acts.options());
  Tensor bt = b.detach().t().contiguous(), at_ = a.detach().t().contiguous();
  const std::vector<Chunk> chunks = plan_chunks(1, N, S4);
  Tensor dbias_parts = at::zeros({need_dbias ? static_cast<int64_t>(chunks.size()) : 0, S4}, acts.options());
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "bottleneck_backward", [&] {
    const scalar_t* A = acts.data_ptr<scalar_t>();
    const scalar_t* C = cs.data_ptr<scalar_t>();
    const scalar_t* TC = tcs.data_ptr<scalar_t>();
    const scalar_t* DO = dout.data_ptr<scalar_t>();
    scalar_t* DG = dgates.data_ptr<scalar_t>();
    scalar_t* DZS = dzs.data_ptr<scalar_t>();
    const scalar_t* BT = bt.data_ptr<scalar_t>();
    const scalar_t* AT = at_.data_ptr<scalar_t>();
    const gemm_fn<scalar_t> gemm = direct_gemm<scalar_t>();
    for_each_chunk(chunks, [&](const Chunk& ch) {
      const int64_t Nc = ch.n1 - ch.n0;
      scalar_t* DB = need_dbias ? dbias_parts.data_ptr<scalar_t>() + (&ch - chunks.data()) * S4 : nullptr;
      Tensor dhc = dh.narrow(0, ch.n0, Nc);  // contiguous rows of (N, n): updated in place
      Tensor dcc = dc.narrow(0, ch.n0, Nc);
      scalar_t* DH = dhc.data_ptr<scalar_t>();
      scalar_t* DC = dcc.data_ptr<scalar_t>();
      for (int64_t t = T - 1; t >= 0; --t) {
        for (int64_t r = ch.n0; r < ch.n1; ++r) {
          const int64_t st = (t * N + r) * n;
          cell_backward_row(DH + (r - ch.n0) * n, DO + st, DC + (r - ch.n0) * n, A + (t * N + r) * S4, C + st,
                            TC + st, DG + (t * N + r) * S4, n, true);
          if (DB) add_row(DB, DG + (t * N + r) * S4, S4);
        }
        if (gemm) {
          scalar_t* DZ = DZS + (t * N + ch.n0) * rank;
          gemm_rows(gemm, Nc, rank, S4, DG + (t * N + ch.n0) * S4, S4, BT, rank, scalar_t(0), DZ, rank);
          if (t > 0 || need_dh0) gemm_rows(gemm, Nc, n, rank, DZ, rank, AT, n, scalar_t(0), DH, n);
        } else {
          Tensor dz = dzs.select(0, t).narrow(0, ch.n0, Nc);
          at::mm_out(dz, dgates.select(0, t).narrow(0, ch.n0, Nc), bt);
          if (t > 0 || need_dh0) {
            at::mm_out(dhc, dz, at_);
          }
        }
      }
    });
  });
  return {dgates, dzs, dh, dc, need_dbias ? dbias_parts.sum(0) : Tensor()};
}

// ---- hidden-state routing (routed.py, routing "hidden"): the choice is made from h inside the loop --
//
// k sub-cells of width s (n = k s) share a sequence's state; at step t the router's logits
// l = h_{t-1} R^T + r (R (k, n)) pick one sub-cell: in eval the first argmax of l; in training the first
// argmax of soft = softmax((l + noise) / tau), the straight-through Gumbel-softmax, whose weights
// y = (onehot - soft) + soft have the one-hot's value and soft's gradient. Every sub-cell computes its
// candidate (h'_j, c'_j) (an LSTM step on its slice of the state, gates in columns [4s j, 4s (j+1)) of
// xw); training mixes h_j <- y_j h'_j + (1 - y_j) h_j (c alike), eval keeps the chosen candidate. The
// maths and its order are RoutedLayer._forward_mixed / _forward_selected's (their Python loops and
// forward_reference are the specification). Threads split the batch (the router couples a sequence's
// sub-cells), each running the whole window of its sequences.
//
// For a y that is exactly 0 (every sub-cell not chosen, also in training: (0 - soft) + soft == 0), the
// candidate's gate gradients are y dh = 0: the backward runs the LSTM cell backward and the recurrent
// matmul for the chosen sub-cell only, and returns the gate gradients compacted, one row (4s) a token.

// One sequence's routing at one step: logits from h_{t-1}, then the choice (first maximum, a NaN
// counting as the maximum as in torch.argmax) and, with noise, soft.
template <typename T>
inline int64_t route_row(const T* __restrict h, const T* __restrict rw, const T* __restrict rb, const T* noise,
                         T tau, int64_t n, int64_t k, T* __restrict soft) {
  T best = T(0);
  int64_t choice = 0;
  for (int64_t j = 0; j < k; ++j) {
    T acc = T(0);
    const T* w = rw + j * n;
#pragma omp simd reduction(+ : acc)
    for (int64_t e = 0; e < n; ++e) acc += h[e] * w[e];
    soft[j] = noise ? (acc + rb[j] + noise[j]) / tau : acc + rb[j];
  }
  if (noise) {
    T top = soft[0];
    for (int64_t j = 1; j < k; ++j) top = std::max(top, soft[j]);
    T sum = T(0);
    for (int64_t j = 0; j < k; ++j) {
      soft[j] = std::exp(soft[j] - top);
      sum += soft[j];
    }
    for (int64_t j = 0; j < k; ++j) soft[j] = soft[j] / sum;
  }
  for (int64_t j = 0; j < k; ++j) {
    const T v = soft[j];
    if (j == 0 || (!std::isnan(best) && (v > best || std::isnan(v)))) {
      best = v;
      choice = j;
    }
  }
  return choice;
}

template <typename T>
inline T mix_weight(const T* soft, int64_t j, int64_t choice) {  // y_j as the Python code computes it
  const T hard = j == choice ? T(1) : T(0);
  return soft ? (hard - soft[j]) + soft[j] : hard;
}

// d loss / d y_j of one sequence's sub-cell j: <dh, h' - h> + <dc, c' - c>, with h' = o tanh(c').
template <typename T>
inline T mix_gradient(const T* __restrict dh, const T* __restrict dc, const T* __restrict o, const T* __restrict tc,
                      const T* __restrict h, const T* __restrict cand, const T* __restrict c, int64_t s) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t e = 0; e < s; ++e) acc += dh[e] * (o[e] * tc[e] - h[e]) + dc[e] * (cand[e] - c[e]);
  return acc;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> hidden_forward(
    const Tensor& xw, const Tensor& h0, const Tensor& c0, const std::optional<Tensor>& bias, const Tensor& w_in,
    const Tensor& rw_in, const std::optional<Tensor>& rb_in, const std::optional<Tensor>& noise_in, double tau) {
  check_float(xw, "xw");
  const int64_t T = xw.size(0), N = xw.size(1), K = w_in.size(0), s = w_in.size(1), S4 = 4 * s, n = K * s, n4 = 4 * n;
  TORCH_CHECK(xw.dim() == 3 && xw.size(2) == n4 && w_in.size(2) == S4 && rw_in.size(0) == K && rw_in.size(1) == n,
              "hidden_forward: xw (T, N, 4n), w (k, s, 4s), router_w (k, n) expected");
  at::NoGradGuard no_grad;
  const bool mix = noise_in.has_value();
  const Tensor w = w_in.detach().contiguous(), rw = rw_in.detach().contiguous();
  const Tensor noise = mix ? noise_in->detach().contiguous() : Tensor();
  const Tensor rb = rb_in.has_value() ? rb_in->detach().contiguous() : at::zeros({K}, xw.options());
  const Tensor bias_c = bias.has_value() ? bias->detach().contiguous() : at::zeros({n4}, xw.options());
  Tensor hs = at::empty({T + 1, N, n}, xw.options());
  Tensor cs = at::empty_like(hs);
  Tensor acts = at::empty({T, N, n4}, xw.options());
  Tensor tcs = at::empty({T, N, n}, xw.options());
  Tensor cands = at::empty({T, N, n}, xw.options());  // every sub-cell's candidate c'
  Tensor soft = at::zeros({mix ? T : 0, N, K}, xw.options());
  Tensor choice = at::empty({T, N}, xw.options().dtype(at::kLong));
  hs.select(0, 0).copy_(h0);
  cs.select(0, 0).copy_(c0);
  int64_t* CH = choice.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "hidden_forward", [&] {
    scalar_t* A = acts.data_ptr<scalar_t>();
    scalar_t* H = hs.data_ptr<scalar_t>();
    scalar_t* C = cs.data_ptr<scalar_t>();
    scalar_t* TC = tcs.data_ptr<scalar_t>();
    scalar_t* CN = cands.data_ptr<scalar_t>();
    scalar_t* SO = mix ? soft.data_ptr<scalar_t>() : nullptr;
    const scalar_t* NZ = mix ? noise.data_ptr<scalar_t>() : nullptr;
    const scalar_t* X = xw.data_ptr<scalar_t>();
    const scalar_t* BI = bias_c.data_ptr<scalar_t>();
    const scalar_t* W = w.data_ptr<scalar_t>();
    const scalar_t* RW = rw.data_ptr<scalar_t>();
    const scalar_t* RB = rb.data_ptr<scalar_t>();
    const scalar_t tau_t = static_cast<scalar_t>(tau);
    const gemm_fn<scalar_t> gemm = direct_gemm<scalar_t>();
    for_each_chunk(plan_chunks(1, N, n4), [&](const Chunk& ch) {
      const int64_t Nc = ch.n1 - ch.n0;
      Tensor m = at::empty({K, Nc, S4}, xw.options());
      scalar_t* M = m.data_ptr<scalar_t>();
      std::vector<scalar_t> hn(s), logits(K);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t b = ch.n0; b < ch.n1; ++b) {
          const int64_t row = t * N + b;
          CH[row] = route_row(H + row * n, RW, RB, NZ ? NZ + row * K : nullptr, tau_t, n, K,
                              SO ? SO + row * K : logits.data());
        }
        for (int64_t j = 0; j < K; ++j) {
          if (gemm) {
            gemm_rows(gemm, Nc, S4, s, H + (t * N + ch.n0) * n + j * s, n, W + j * s * S4, S4, scalar_t(0),
                      M + j * Nc * S4, S4);
          } else {
            Tensor mj = m.select(0, j);
            at::mm_out(mj, hs.select(0, t).narrow(0, ch.n0, Nc).narrow(1, j * s, s), w.select(0, j));
          }
        }
        for (int64_t b = ch.n0; b < ch.n1; ++b) {
          const int64_t row = t * N + b, chosen = CH[row];
          const scalar_t* so = SO ? SO + row * K : nullptr;
          for (int64_t j = 0; j < K; ++j) {
            const int64_t u = row * n + j * s;  // this sub-cell's slice of h_{t-1}, c_{t-1}, tc, c'
            const int64_t v = u + N * n;         // ... of h_t, c_t
            if (!mix && j != chosen) {           // eval: the other sub-cells keep their state
              std::memcpy(H + v, H + u, s * sizeof(scalar_t));
              std::memcpy(C + v, C + u, s * sizeof(scalar_t));
              continue;
            }
            cell_forward_row(X + row * n4 + j * S4, BI + j * S4, M + (j * Nc + b - ch.n0) * S4, A + row * n4 + j * S4,
                             C + u, H + u, CN + u, TC + u, hn.data(), s, true);
            if (!mix) {
              std::memcpy(H + v, hn.data(), s * sizeof(scalar_t));
              std::memcpy(C + v, CN + u, s * sizeof(scalar_t));
              continue;
            }
            const scalar_t y = mix_weight(so, j, chosen), y1 = scalar_t(1) - y;
            for (int64_t e = 0; e < s; ++e) {
              H[v + e] = y * hn[e] + y1 * H[u + e];
              C[v + e] = y * CN[u + e] + y1 * C[u + e];
            }
          }
        }
      }
    });
  });
  return {hs, cs, acts, tcs, cands, soft, choice};
}

// `dest` (T*N,): the row of token t*N + b in the compacted gate gradients, sorted by sub-cell and, within
// one, by token (a stable sort of the choices): one step's rows of a sub-cell are consecutive, so its
// recurrent matmul reads them in place, and the caller's per-sub-cell weight gradients are one matmul each.
std::tuple<Tensor, Tensor, Tensor, Tensor> hidden_backward(
    const std::optional<Tensor>& d_out, const std::optional<Tensor>& d_hn, const std::optional<Tensor>& d_cn,
    const Tensor& hs, const Tensor& cs, const Tensor& acts, const Tensor& tcs, const Tensor& cands,
    const std::optional<Tensor>& soft_in, const Tensor& choice_in, const Tensor& dest_in, const Tensor& w_in,
    const Tensor& rw_in, double tau, bool need_dh0) {
  const int64_t T = acts.size(0), N = acts.size(1), n4 = acts.size(2), n = n4 / 4, K = w_in.size(0), s = n / K,
                S4 = 4 * s;
  at::NoGradGuard no_grad;
  const bool mix = soft_in.has_value();
  Tensor dh = d_hn.has_value() ? d_hn->contiguous().clone() : at::zeros({N, n}, acts.options());
  Tensor dc = d_cn.has_value() ? d_cn->contiguous().clone() : at::zeros({N, n}, acts.options());
  Tensor dout = d_out.has_value() ? d_out->contiguous() : at::zeros({T, N, n}, acts.options());
  const Tensor wt = w_in.detach().transpose(1, 2).contiguous();  // (k, 4s, s)
  const Tensor rw = rw_in.detach().contiguous();
  const Tensor soft = mix ? soft_in->contiguous() : Tensor();
  const Tensor choice = choice_in.contiguous(), dest = dest_in.contiguous();
  Tensor dgates = at::empty({T * N, S4}, acts.options());
  Tensor dlogits = mix ? at::empty({T, N, K}, acts.options()) : Tensor();
  const int64_t* CH = choice.data_ptr<int64_t>();
  const int64_t* DS = dest.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "hidden_backward", [&] {
    const scalar_t* A = acts.data_ptr<scalar_t>();
    const scalar_t* H = hs.data_ptr<scalar_t>();
    const scalar_t* C = cs.data_ptr<scalar_t>();
    const scalar_t* TC = tcs.data_ptr<scalar_t>();
    const scalar_t* CN = cands.data_ptr<scalar_t>();
    const scalar_t* SO = mix ? soft.data_ptr<scalar_t>() : nullptr;
    const scalar_t* DO = dout.data_ptr<scalar_t>();
    const scalar_t* WT = wt.data_ptr<scalar_t>();
    const scalar_t* RW = rw.data_ptr<scalar_t>();
    scalar_t* DG = dgates.data_ptr<scalar_t>();
    scalar_t* DL = mix ? dlogits.data_ptr<scalar_t>() : nullptr;
    const scalar_t tau_t = static_cast<scalar_t>(tau);
    const gemm_fn<scalar_t> gemm = direct_gemm<scalar_t>();
    for_each_chunk(plan_chunks(1, N, n4), [&](const Chunk& ch) {
      const int64_t Nc = ch.n1 - ch.n0;
      scalar_t* DH = dh.data_ptr<scalar_t>() + ch.n0 * n;  // this chunk's rows, updated in place
      scalar_t* DC = dc.data_ptr<scalar_t>() + ch.n0 * n;
      Tensor rec = at::empty({Nc, s}, acts.options());
      scalar_t* RC = rec.data_ptr<scalar_t>();
      std::vector<scalar_t> dy(K);
      for (int64_t t = T - 1; t >= 0; --t) {
        for (int64_t b = ch.n0; b < ch.n1; ++b) {
          const int64_t row = t * N + b, chosen = CH[row];
          scalar_t* dhb = DH + (b - ch.n0) * n;
          scalar_t* dcb = DC + (b - ch.n0) * n;
          const scalar_t* dob = DO + row * n;
          for (int64_t e = 0; e < n; ++e) dhb[e] += dob[e];
          const scalar_t* so = SO ? SO + row * K : nullptr;
          for (int64_t j = 0; j < K; ++j) {
            const int64_t u = row * n + j * s;
            const scalar_t* a = A + row * n4 + j * S4;
            scalar_t* dhj = dhb + j * s;
            scalar_t* dcj = dcb + j * s;
            if (mix) {  // d y_j: the candidate's change of the state against the incoming gradient
              dy[j] = mix_gradient(dhj, dcj, a + 3 * s, TC + u, H + u, CN + u, C + u, s);
            }
            if (j != chosen) continue;  // y_j == 0: the gradient passes to h_{t-1}, c_{t-1} unchanged
            const scalar_t y = mix_weight(so, j, chosen), y1 = scalar_t(1) - y;
            scalar_t* dg = DG + DS[row] * S4;
            const scalar_t *ai = a, *af = a + s, *ag = a + 2 * s, *ao = a + 3 * s;
            for (int64_t e = 0; e < s; ++e) {
              const scalar_t dht = y * dhj[e], i = ai[e], f = af[e], g = ag[e], o = ao[e], tc = TC[u + e];
              const scalar_t dct = y * dcj[e] + dht * (o * (scalar_t(1) - tc * tc));
              dg[e] = dct * (g * (i - i * i));
              dg[s + e] = dct * (C[u + e] * (f - f * f));
              dg[2 * s + e] = dct * (i * (scalar_t(1) - g * g));
              dg[3 * s + e] = dht * (tc * (o - o * o));
              dcj[e] = y1 * dcj[e] + dct * f;
              dhj[e] = y1 * dhj[e];
            }
          }
          if (mix) {  // softmax, then the router's linear map, back to h_{t-1}
            scalar_t dot = scalar_t(0);
            for (int64_t j = 0; j < K; ++j) dot += so[j] * dy[j];
            scalar_t* dl = DL + row * K;
            for (int64_t j = 0; j < K; ++j) dl[j] = so[j] * (dy[j] - dot) / tau_t;
            for (int64_t j = 0; j < K; ++j) {
              const scalar_t lj = dl[j];
              const scalar_t* wj = RW + j * n;
              for (int64_t e = 0; e < n; ++e) dhb[e] += lj * wj[e];
            }
          }
        }
        if (t == 0 && !need_dh0) continue;
        for (int64_t j = 0; j < K; ++j) {  // the chosen rows' recurrent gradient, one matmul per sub-cell
          int64_t first = -1, rows = 0;
          for (int64_t b = ch.n0; b < ch.n1; ++b) {
            if (CH[t * N + b] != j) continue;
            if (first < 0) first = DS[t * N + b];
            ++rows;
          }
          if (rows == 0) continue;
          if (gemm) {
            gemm_rows(gemm, rows, s, S4, DG + first * S4, S4, WT + j * S4 * s, s, scalar_t(0), RC, s);
          } else {
            Tensor r = rec.narrow(0, 0, rows);
            at::mm_out(r, dgates.narrow(0, first, rows), wt.select(0, j));
          }
          const scalar_t* r = RC;
          for (int64_t b = ch.n0; b < ch.n1; ++b) {
            if (CH[t * N + b] != j) continue;
            scalar_t* dhj = DH + (b - ch.n0) * n + j * s;
            for (int64_t e = 0; e < s; ++e) dhj[e] += r[e];
            r += s;
          }
        }
      }
    });
  });
  return {dgates, mix ? dlogits : Tensor(), dh, dc};
}

}  // namespace
TORCH_LIBRARY(squeezelstm_kernels, m) {
  m.def(
      "linear_forward(Tensor xw, Tensor h0, Tensor c0, Tensor? keep, Tensor? bias, Tensor w, Tensor? wx=None) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "linear_backward(Tensor? d_out, Tensor? d_hn, Tensor? d_cn, Tensor hs, Tensor cs, Tensor tcs, Tensor acts, "
      "Tensor? keep, Tensor w, bool need_dh0, bool need_dbias) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bottleneck_forward(Tensor xz, Tensor h0, Tensor c0, Tensor a, Tensor b, Tensor? bias) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bottleneck_backward(Tensor? d_out, Tensor? d_hn, Tensor? d_cn, Tensor hs, Tensor cs, Tensor tcs, Tensor acts, "
      "Tensor a, Tensor b, bool need_dh0, bool need_dbias) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.impl("linear_forward", c10::DispatchKey::CPU, TORCH_FN(linear_forward));
  m.impl("linear_backward", c10::DispatchKey::CPU, TORCH_FN(linear_backward));
  m.impl("bottleneck_forward", c10::DispatchKey::CPU, TORCH_FN(bottleneck_forward));
  m.impl("bottleneck_backward", c10::DispatchKey::CPU, TORCH_FN(bottleneck_backward));
  m.def(
      "hidden_forward(Tensor xw, Tensor h0, Tensor c0, Tensor? bias, Tensor w, Tensor router_w, Tensor? router_b, "
      "Tensor? noise, float tau) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "hidden_backward(Tensor? d_out, Tensor? d_hn, Tensor? d_cn, Tensor hs, Tensor cs, Tensor acts, Tensor tcs, "
      "Tensor cands, Tensor? soft, Tensor choice, Tensor dest, Tensor w, Tensor router_w, float tau, bool need_dh0) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  m.impl("hidden_forward", c10::DispatchKey::CPU, TORCH_FN(hidden_forward));
  m.impl("hidden_backward", c10::DispatchKey::CPU, TORCH_FN(hidden_backward));
}
