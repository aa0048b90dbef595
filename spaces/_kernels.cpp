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
//   linear_forward(xw, h0, c0, keep?, w)                    -> (hs, cs, tcs, acts)
//   linear_backward(d_out?, d_hn?, d_cn?, hs, cs, tcs, acts, keep?, w, need_dh0) -> (dgates, dh0, dc0)
//   bottleneck_forward(xz, h0, c0, a, b, bias?)             -> (hs, cs, tcs, acts, zs)
//   bottleneck_backward(d_out?, d_hn?, d_cn?, hs, cs, tcs, acts, a, b, need_dh0) -> (dgates, dzs, dh0, dc0)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>

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
// Forward: pre-activations are `x + m` (4s each: the input side and the recurrent matmul); writes the
// activations to `a`. No pointer may be null: a conditional load would stop the vectorisation.
template <typename T>
inline void cell_forward_row(const T* __restrict x, const T* __restrict m, T* __restrict a,
                             const T* __restrict c_prev, const T* __restrict h_prev, T* __restrict c,
                             T* __restrict tc, T* __restrict h, int64_t s, bool keep) {
  T* ai = a;
  T* af = a + s;
  T* ag = a + 2 * s;
  T* ao = a + 3 * s;
  for (int64_t j = 0; j < s; ++j) {
    T i = sigmoid_f(x[j] + m[j]);
    T f = sigmoid_f(x[s + j] + m[s + j]);
    T g = tanh_f(x[2 * s + j] + m[2 * s + j]);
    T o = sigmoid_f(x[3 * s + j] + m[3 * s + j]);
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
  if (!keep) {  // hard routing: this unit block keeps its state this step
    for (int64_t j = 0; j < s; ++j) {
      c[j] = c_prev[j];
      h[j] = h_prev[j];
    }
  }
}

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

// Rows (group, sequence) of one step in parallel when there is enough work to pay for the threads.
// (The backward pass has no transcendental functions: ~4x cheaper per element, so 4x the grain.)
constexpr int64_t kGrainElements = 32768;

inline int64_t grain_rows(int64_t s, int64_t factor = 1) {
  return std::max<int64_t>(1, factor * kGrainElements / std::max<int64_t>(1, 4 * s));
}

void check_float(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name, " must be float32 or float64");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// ---- G-LSTM / hard-routed sub-cells: pre_t = xw_t + h_{t-1} W, batched over groups -------------

std::tuple<Tensor, Tensor, Tensor, Tensor> linear_forward(const Tensor& xw, const Tensor& h0, const Tensor& c0,
                                                          const std::optional<Tensor>& keep, const Tensor& w) {
  check_float(xw, "xw");
  const int64_t G = xw.size(0), T = xw.size(1), N = xw.size(2), S4 = xw.size(3), s = S4 / 4;
  at::NoGradGuard no_grad;
  Tensor hs = at::empty({G, T + 1, N, s}, xw.options());
  Tensor cs = at::empty_like(hs);
  Tensor tcs = at::empty({G, T, N, s}, xw.options());
  Tensor acts = at::empty_like(xw);
  hs.select(1, 0).copy_(h0);
  cs.select(1, 0).copy_(c0);
  Tensor kp = keep.has_value() ? keep->to(at::kBool).contiguous() : Tensor();
  const bool* kd = kp.defined() ? kp.data_ptr<bool>() : nullptr;  // (G, T, N, 1)
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "linear_forward", [&] {
    scalar_t* A = acts.data_ptr<scalar_t>();
    scalar_t* H = hs.data_ptr<scalar_t>();
    scalar_t* C = cs.data_ptr<scalar_t>();
    scalar_t* TC = tcs.data_ptr<scalar_t>();
    const scalar_t* X = xw.data_ptr<scalar_t>();
    // The recurrent matmul goes to a contiguous scratch (bmm into a strided slice, or baddbmm, costs
    // 50% more at these sizes); the input side is added in the element-wise pass.
    Tensor m = at::empty({G, N, S4}, xw.options());
    const scalar_t* M = m.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t) {
      at::bmm_out(m, hs.select(1, t), w);
      at::parallel_for(0, G * N, grain_rows(s), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const int64_t g = r / N, n = r % N;
          const int64_t st = ((g * (T + 1) + t) * N + n) * s;  // hs/cs at step t
          const int64_t nx = st + N * s;                         // hs/cs at step t + 1
          const bool k = kd ? kd[(g * T + t) * N + n] : true;
          const int64_t row = (g * T + t) * N + n;
          cell_forward_row(X + row * S4, M + r * S4, A + row * S4, C + st, H + st, C + nx,
                           TC + ((g * T + t) * N + n) * s, H + nx, s, k);
        }
      });
    }
  });
  return {hs, cs, tcs, acts};
}

std::tuple<Tensor, Tensor, Tensor> linear_backward(const std::optional<Tensor>& d_out, const std::optional<Tensor>& d_hn,
                                                   const std::optional<Tensor>& d_cn, const Tensor& hs, const Tensor& cs,
                                                   const Tensor& tcs, const Tensor& acts, const std::optional<Tensor>& keep,
                                                   const Tensor& w, bool need_dh0) {
  const int64_t G = acts.size(0), T = acts.size(1), N = acts.size(2), S4 = acts.size(3), s = S4 / 4;
  at::NoGradGuard no_grad;
  Tensor dh = d_hn.has_value() ? d_hn->contiguous().clone() : at::zeros({G, N, s}, acts.options());
  Tensor dc = d_cn.has_value() ? d_cn->contiguous().clone() : at::zeros({G, N, s}, acts.options());
  Tensor dout = d_out.has_value() ? d_out->contiguous() : at::zeros({T, N, G * s}, acts.options());
  Tensor dgates = at::empty_like(acts);
  Tensor wt = w.transpose(1, 2).contiguous();  // bmm with a transposed view is ~50% slower here
  Tensor kp = keep.has_value() ? keep->to(at::kBool).contiguous() : Tensor();
  const bool* kd = kp.defined() ? kp.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "linear_backward", [&] {
    const scalar_t* A = acts.data_ptr<scalar_t>();
    const scalar_t* C = cs.data_ptr<scalar_t>();
    const scalar_t* TC = tcs.data_ptr<scalar_t>();
    const scalar_t* DO = dout.data_ptr<scalar_t>();
    scalar_t* DG = dgates.data_ptr<scalar_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      scalar_t* DH = dh.data_ptr<scalar_t>();
      scalar_t* DC = dc.data_ptr<scalar_t>();
      at::parallel_for(0, G * N, grain_rows(s, 4), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const int64_t g = r / N, n = r % N;
          const int64_t row = (g * T + t) * N + n;
          const bool k = kd ? kd[row] : true;
          cell_backward_row(DH + r * s, DO + (t * N + n) * G * s + g * s, DC + r * s, A + row * S4,
                            C + ((g * (T + 1) + t) * N + n) * s, TC + row * s, DG + row * S4, s, k);
        }
      });
      if (t > 0 || need_dh0) {
        Tensor dg_t = dgates.select(1, t);
        if (kd) {
          dh.baddbmm_(dg_t, wt);  // dh holds the bypass of kept blocks
        } else {
          at::bmm_out(dh, dg_t, wt);
        }
      }
    }
  });
  return {dgates, dh, dc};
}

// ---- F-LSTM: z_t = xz_t + h_{t-1} A, pre_t = z_t B + b -------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bottleneck_forward(const Tensor& xz, const Tensor& h0, const Tensor& c0,
                                                                      const Tensor& a, const Tensor& b,
                                                                      const std::optional<Tensor>& bias) {
  check_float(xz, "xz");
  const int64_t T = xz.size(0), N = xz.size(1), n = h0.size(-1), S4 = 4 * n;
  at::NoGradGuard no_grad;
  Tensor hs = at::empty({T + 1, N, n}, xz.options());
  Tensor cs = at::empty_like(hs);
  Tensor tcs = at::empty({T, N, n}, xz.options());
  Tensor zs = at::empty_like(xz);
  Tensor acts = at::empty({T, N, S4}, xz.options());
  hs.select(0, 0).copy_(h0);
  cs.select(0, 0).copy_(c0);
  AT_DISPATCH_FLOATING_TYPES(xz.scalar_type(), "bottleneck_forward", [&] {
    scalar_t* A = acts.data_ptr<scalar_t>();
    scalar_t* H = hs.data_ptr<scalar_t>();
    scalar_t* C = cs.data_ptr<scalar_t>();
    scalar_t* TC = tcs.data_ptr<scalar_t>();
    Tensor bias_c = bias.has_value() ? bias->contiguous() : at::zeros({S4}, xz.options());
    const scalar_t* B = bias_c.data_ptr<scalar_t>();
    Tensor m = at::empty({N, S4}, xz.options());
    const scalar_t* M = m.data_ptr<scalar_t>();
    const scalar_t* XZ0 = xz.data_ptr<scalar_t>();
    const int64_t rank = xz.size(2);
    for (int64_t t = 0; t < T; ++t) {
      Tensor z = zs.select(0, t);
      at::mm_out(z, hs.select(0, t), a);
      {  // z += xz_t here: addmm costs more than mm at these sizes
        scalar_t* Z = z.data_ptr<scalar_t>();
        const scalar_t* XZ = XZ0 + t * N * rank;
        for (int64_t e = 0; e < N * rank; ++e) Z[e] += XZ[e];
      }
      at::mm_out(m, z, b);
      at::parallel_for(0, N, grain_rows(n), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const int64_t st = (t * N + r) * n;
          cell_forward_row(B, M + r * S4, A + (t * N + r) * S4, C + st, H + st, C + st + N * n, TC + st,
                           H + st + N * n, n, true);
        }
      });
    }
  });
  return {hs, cs, tcs, acts, zs};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> bottleneck_backward(const std::optional<Tensor>& d_out,
                                                               const std::optional<Tensor>& d_hn,
                                                               const std::optional<Tensor>& d_cn, const Tensor& hs,
                                                               const Tensor& cs, const Tensor& tcs, const Tensor& acts,
                                                               const Tensor& a, const Tensor& b, bool need_dh0) {
  const int64_t T = acts.size(0), N = acts.size(1), S4 = acts.size(2), n = S4 / 4, rank = a.size(1);
  at::NoGradGuard no_grad;
  Tensor dh = d_hn.has_value() ? d_hn->contiguous().clone() : at::zeros({N, n}, acts.options());
  Tensor dc = d_cn.has_value() ? d_cn->contiguous().clone() : at::zeros({N, n}, acts.options());
  Tensor dout = d_out.has_value() ? d_out->contiguous() : at::zeros({T, N, n}, acts.options());
  Tensor dgates = at::empty_like(acts);
  Tensor dzs = at::empty({T, N, rank}, acts.options());
  Tensor bt = b.t().contiguous(), at_ = a.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "bottleneck_backward", [&] {
    const scalar_t* A = acts.data_ptr<scalar_t>();
    const scalar_t* C = cs.data_ptr<scalar_t>();
    const scalar_t* TC = tcs.data_ptr<scalar_t>();
    const scalar_t* DO = dout.data_ptr<scalar_t>();
    scalar_t* DG = dgates.data_ptr<scalar_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      scalar_t* DH = dh.data_ptr<scalar_t>();
      scalar_t* DC = dc.data_ptr<scalar_t>();
      at::parallel_for(0, N, grain_rows(n, 4), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          const int64_t st = (t * N + r) * n;
          cell_backward_row(DH + r * n, DO + st, DC + r * n, A + (t * N + r) * S4, C + st, TC + st,
                            DG + (t * N + r) * S4, n, true);
        }
      });
      Tensor dz = dzs.select(0, t);
      at::mm_out(dz, dgates.select(0, t), bt);
      if (t > 0 || need_dh0) {
        at::mm_out(dh, dz, at_);
      }
    }
  });
  return {dgates, dzs, dh, dc};
}

}  // namespace

TORCH_LIBRARY(squeezelstm_kernels, m) {
  m.def("linear_forward(Tensor xw, Tensor h0, Tensor c0, Tensor? keep, Tensor w) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "linear_backward(Tensor? d_out, Tensor? d_hn, Tensor? d_cn, Tensor hs, Tensor cs, Tensor tcs, Tensor acts, "
      "Tensor? keep, Tensor w, bool need_dh0) -> (Tensor, Tensor, Tensor)");
  m.def(
      "bottleneck_forward(Tensor xz, Tensor h0, Tensor c0, Tensor a, Tensor b, Tensor? bias) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "bottleneck_backward(Tensor? d_out, Tensor? d_hn, Tensor? d_cn, Tensor hs, Tensor cs, Tensor tcs, Tensor acts, "
      "Tensor a, Tensor b, bool need_dh0) -> (Tensor, Tensor, Tensor, Tensor)");
  m.impl("linear_forward", c10::DispatchKey::CPU, TORCH_FN(linear_forward));
  m.impl("linear_backward", c10::DispatchKey::CPU, TORCH_FN(linear_backward));
  m.impl("bottleneck_forward", c10::DispatchKey::CPU, TORCH_FN(bottleneck_forward));
  m.impl("bottleneck_backward", c10::DispatchKey::CPU, TORCH_FN(bottleneck_backward));
}
