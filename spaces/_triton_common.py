"""The pieces of an LSTM step that every Triton kernel of the GPU path calls: the gate nonlinearities and
the cell update with its hand-written gradient, the four gates' tiles, the tiled matmuls, and the state
copies into and out of a window's buffers.

They are ``triton.jit`` functions that the kernels call (Triton inlines them into each kernel, so a
kernel compiles to the code it would be with the lines written out); constexpr arguments stay
constexpr. Each keeps the order of floating-point operations of the code it replaced, so results are
the same to the bit. They are wrapped when this module is imported, in the mode (compiled or Triton's
interpreter) that ``_triton`` chose before triton was imported; where triton is absent they stay plain
functions and ``_triton.kernel`` raises its one-line error on the first launch.
"""

from __future__ import annotations

from . import _triton  # noqa: F401  (chooses Triton's interpreter where there is no GPU, before triton is imported)

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still imports; kernel() raises a one-line error on first launch
    triton = tl = None


def _device(fn):
    """``fn`` as a function the kernels call (``triton.jit``), or as it is where triton is absent."""
    return fn if triton is None else triton.jit(fn)


@_device
def row_block(N, BN: tl.constexpr):
    """This program's ``BN`` sequences (rows of the batch) and which of them exist (< N)."""
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    return rows, rows < N


@_device
def col_block(c0, BC: tl.constexpr, n, rmask):
    """Columns ``c0 .. c0 + BC`` of a tensor n wide, which of them exist (< n), and the mask of the
    (rows, cols) tile with the rows' ``rmask``."""
    cols = c0 + tl.arange(0, BC)
    cm = cols < n
    return cols, cm, rmask[:, None] & cm[None, :]


@_device
def copy_states(dst_h, src_h, dst_c, src_c, rows, rmask, n: tl.constexpr, BC: tl.constexpr):
    """Copy this program's rows of two (N, n) states (h and c, or their gradients), ``BC`` columns at a time."""
    for c0 in range(0, n, BC):
        cols, cm, m = col_block(c0, BC, n, rmask)
        off = rows[:, None] * n + cols[None, :]
        tl.store(dst_h + off, tl.load(src_h + off, mask=m), mask=m)
        tl.store(dst_c + off, tl.load(src_c + off, mask=m), mask=m)


@_device
def window_rows(N, BN: tl.constexpr, dst_h, src_h, dst_c, src_c, n: tl.constexpr, BC: tl.constexpr):
    """This program's rows (``row_block``), with their two states copied from ``src_h, src_c`` (N, n)
    into ``dst_h, dst_c``, the first slot of the window's buffers, and visible to the whole program."""
    rows, rmask = row_block(N, BN)
    copy_states(dst_h, src_h, dst_c, src_c, rows, rmask, n, BC)
    tl.debug_barrier()
    return rows, rmask


@_device
def copy_final_grads(dh0, dc0, dh_buf, dc_buf, T, N, rows, rmask, n: tl.constexpr, BC: tl.constexpr):
    """The gradients reaching the window's initial state into ``dh0, dc0``, out of the backward's ping-pong
    buffers (2, N, n), whose slot ``i % 2`` holds the gradient after step ``T - 1 - i``: slot ``T % 2``."""
    fin = (T % 2) * N * n
    copy_states(dh0, dh_buf + fin, dc0, dc_buf + fin, rows, rmask, n, BC)


@_device
def tanh(x):
    """tanh without overflow: sign(x) (1 - e) / (1 + e), e = exp(-2|x|)."""
    e = tl.exp(-2.0 * tl.abs(x))
    return tl.where(x >= 0, 1.0, -1.0) * (1.0 - e) / (1.0 + e)


@_device
def lstm_cell(a_i, a_f, a_g, a_o, c_prev):
    """One LSTM step from the gates' pre-activations: ``(i, f, g, o, c, h)`` with ``c = f c_prev + i g``
    and ``h = o tanh(c)`` (o times tanh's terms in turn, as the kernels always computed it)."""
    gi = tl.sigmoid(a_i)
    gf = tl.sigmoid(a_f)
    gg = tanh(a_g)
    go = tl.sigmoid(a_o)
    c = gf * c_prev + gi * gg
    ec = tl.exp(-2.0 * tl.abs(c))
    h = go * tl.where(c >= 0, 1.0, -1.0) * (1.0 - ec) / (1.0 + ec)
    return gi, gf, gg, go, c, h


@_device
def lstm_cell_backward(dh, dc, gi, gf, gg, go, tc, c_prev):
    """The gradients of the gates' pre-activations ``(d_i, d_f, d_g, d_o)`` and of the new cell state
    (``dct``, before the forget gate carries it back), from those of h (``dh``) and of c (``dc``) after
    the step, the saved gates, ``tc = tanh(c)`` and the previous cell state."""
    dct = dc + dh * go * (1.0 - tc * tc)
    d_i = dct * gg * gi * (1.0 - gi)
    d_f = dct * c_prev * gf * (1.0 - gf)
    d_g = dct * gi * (1.0 - gg * gg)
    d_o = dh * tc * go * (1.0 - go)
    return d_i, d_f, d_g, d_o, dct


@_device
def load_gates(ptr, stride, mask):
    """The four gates' tiles (i, f, g, o) at ``ptr``, ``ptr + stride``, ... (0 where masked)."""
    return (tl.load(ptr, mask=mask, other=0.0), tl.load(ptr + stride, mask=mask, other=0.0),
            tl.load(ptr + 2 * stride, mask=mask, other=0.0), tl.load(ptr + 3 * stride, mask=mask, other=0.0))


@_device
def store_gates(ptr, stride, mask, v_i, v_f, v_g, v_o):
    """Store the four gates' tiles at ``ptr``, ``ptr + stride``, ..."""
    tl.store(ptr, v_i, mask=mask)
    tl.store(ptr + stride, v_f, mask=mask)
    tl.store(ptr + 2 * stride, v_g, mask=mask)
    tl.store(ptr + 3 * stride, v_o, mask=mask)


@_device
def gate_accumulators(bias, n, cols, cm, BN: tl.constexpr, BS: tl.constexpr, dtype: tl.constexpr):
    """Four (BN, BS) accumulators for the gates' columns ``cols`` of the state: zeros plus the gate's
    bias (``bias`` (4n,) in gate order). Always loaded, zeros for a layer without one (``bias_or_zeros``):
    accumulators that start from the constant zero, reduced in a single chunk, make LLVM's SLP
    vectorizer abort the sm_90 compile (Triton 3.9, float32 without TF32; spaces/README.md)."""
    a_i = tl.zeros((BN, BS), dtype=dtype) + tl.load(bias + cols, mask=cm, other=0.0)[None, :]
    a_f = tl.zeros((BN, BS), dtype=dtype) + tl.load(bias + n + cols, mask=cm, other=0.0)[None, :]
    a_g = tl.zeros((BN, BS), dtype=dtype) + tl.load(bias + 2 * n + cols, mask=cm, other=0.0)[None, :]
    a_o = tl.zeros((BN, BS), dtype=dtype) + tl.load(bias + 3 * n + cols, mask=cm, other=0.0)[None, :]
    return a_i, a_f, a_g, a_o


@_device
def matmul_acc(acc, x, x_row, w, w_k, w_col, rows, rmask, cols, cm, K, BK: tl.constexpr, PREC: tl.constexpr):
    """``acc + X W`` for this program's rows and ``cols``, the reduction over K in chunks of BK: X's
    (row, k) entry at ``x + row * x_row + k``, W's (k, col) at ``w + k * w_k + col * w_col``."""
    for k0 in range(0, K, BK):
        kk, km, xm = col_block(k0, BK, K, rmask)
        xt = tl.load(x + rows[:, None] * x_row + kk[None, :], mask=xm, other=0.0)
        wt = tl.load(w + kk[:, None] * w_k + cols[None, :] * w_col, mask=km[:, None] & cm[None, :], other=0.0)
        acc += tl.dot(xt, wt, input_precision=PREC)
    return acc


@_device
def gate_matmuls(a_i, a_f, a_g, a_o, x, x_row, w, w_k, w_col, w_gate, rows, rmask, cols, cm, K,
                 BK: tl.constexpr, PREC: tl.constexpr):
    """Each gate's accumulator plus ``X W_g``, one X for all four gates (each chunk of it loaded once):
    as ``matmul_acc``, with gate g's W at ``w + g * w_gate``."""
    for k0 in range(0, K, BK):
        kk, km, xm = col_block(k0, BK, K, rmask)
        xt = tl.load(x + rows[:, None] * x_row + kk[None, :], mask=xm, other=0.0)
        wp = w + kk[:, None] * w_k + cols[None, :] * w_col
        wm = km[:, None] & cm[None, :]
        a_i += tl.dot(xt, tl.load(wp, mask=wm, other=0.0), input_precision=PREC)
        a_f += tl.dot(xt, tl.load(wp + w_gate, mask=wm, other=0.0), input_precision=PREC)
        a_g += tl.dot(xt, tl.load(wp + 2 * w_gate, mask=wm, other=0.0), input_precision=PREC)
        a_o += tl.dot(xt, tl.load(wp + 3 * w_gate, mask=wm, other=0.0), input_precision=PREC)
    return a_i, a_f, a_g, a_o
