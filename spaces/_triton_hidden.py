"""H-LSTM's gate hidden layers on the GPU path: one persistent Triton kernel per direction and window.

The H-LSTM step (``hidden.py``) puts a ReLU layer of width ``d`` inside each gate, so its recurrent
map is not linear and torch's fused LSTM cannot run it; through autograd it costs ~15 launches a
step. Here one program owns ``BLOCK_ROWS`` sequences for the whole window and runs, per step,

    z = relu(xw_t + W1_hh h_{t-1})                 xw_t = W1_ih x_t + b1 (window-wide, outside), z: (4d,)
    [i f g o] = act(W2_k z_k + b2_k),  c_t = f c_{t-1} + i g,  h_t = o tanh(c_t)

and the backward kernel the same steps in reverse with the hand-written gradient. The weights come
in already masked (``weight * mask``, with the growth hooks on them, as in the reference); their
gradients are window-wide matmuls afterwards from the pre-activation gradients the kernel saves.

Each phase of a step (first layer, second layer + cell; and in reverse) writes its result to a
window buffer that the next phase reads back after a barrier, because the next matmul reduces over
all of it and Triton cannot slice a register tile.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._triton import BLOCK_ROWS, bias_or_zeros, block, cdiv, dot_precision, incoming_grads, kernel
from ._triton_common import (col_block, copy_final_grads, copy_states, gate_accumulators, load_gates, lstm_cell,
                             lstm_cell_backward, matmul_acc, store_gates, tanh, window_rows)

try:
    import triton.language as tl
except ImportError:  # the module still imports; kernel() raises a one-line error on first launch
    tl = None


def _hidden_forward(xw, w1hh, w2, b2, h0, c0, hs, cs, zs, acts, h_n, c_n, T, N,
                    NH: tl.constexpr, D: tl.constexpr,
                    BN: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr,
                    BKD: tl.constexpr, PREC: tl.constexpr):
    n = NH
    rows, rmask = window_rows(N, BN, hs, h0, cs, c0, n, BS)
    for t in range(T):
        # -- first layer of all four gates: z = relu(xw_t + h_{t-1} W1_hh^T), (BN, 4d)
        for d0 in range(0, 4 * D, BD):
            dc, dm, m = col_block(d0, BD, 4 * D, rmask)
            zoff = t * N * 4 * D + rows[:, None] * (4 * D) + dc[None, :]
            acc = matmul_acc(tl.load(xw + zoff, mask=m, other=0.0), hs + t * N * n, n, w1hh, 1, n,
                             rows, rmask, dc, dm, n, BK, PREC)
            tl.store(zs + zoff, tl.maximum(acc, 0.0), mask=m)
        tl.debug_barrier()  # z is complete before the second layer reduces over it
        # -- second layer per gate (z_k W2_k[cols, :]^T) and the cell update, by column tiles of the state
        z = zs + t * N * 4 * D
        for s0 in range(0, n, BS):
            cols, cm, m = col_block(s0, BS, n, rmask)
            a_i, a_f, a_g, a_o = gate_accumulators(b2, n, cols, cm, BN, BS, h0.dtype.element_ty)
            a_i = matmul_acc(a_i, z, 4 * D, w2, 1, D, rows, rmask, cols, cm, D, BKD, PREC)
            a_f = matmul_acc(a_f, z + D, 4 * D, w2 + n * D, 1, D, rows, rmask, cols, cm, D, BKD, PREC)
            a_g = matmul_acc(a_g, z + 2 * D, 4 * D, w2 + 2 * n * D, 1, D, rows, rmask, cols, cm, D, BKD, PREC)
            a_o = matmul_acc(a_o, z + 3 * D, 4 * D, w2 + 3 * n * D, 1, D, rows, rmask, cols, cm, D, BKD, PREC)
            soff = rows[:, None] * n + cols[None, :]
            gi, gf, gg, go, c, h = lstm_cell(a_i, a_f, a_g, a_o, tl.load(cs + t * N * n + soff, mask=m, other=0.0))
            tl.store(hs + (t + 1) * N * n + soff, h, mask=m)
            tl.store(cs + (t + 1) * N * n + soff, c, mask=m)
            store_gates(acts + t * N * 4 * n + rows[:, None] * (4 * n) + cols[None, :], n, m, gi, gf, gg, go)
        tl.debug_barrier()  # h_t is complete before step t + 1 reads it
    copy_states(h_n, hs + T * N * n, c_n, cs + T * N * n, rows, rmask, n, BS)


def _hidden_backward(dout, dh_last, dc_last, cs, zs, acts, w1hh, w2, dpre2, dpre1, dh_buf, dc_buf, dh0, dc0, T, N,
                     NH: tl.constexpr, D: tl.constexpr,
                     BN: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr,
                     BKD: tl.constexpr, PREC: tl.constexpr):
    n = NH
    # dh_buf / dc_buf (2, N, n): the gradient reaching the state after the step being processed,
    # double-buffered by step parity so that a step never overwrites what it is reading.
    rows, rmask = window_rows(N, BN, dh_buf, dh_last, dc_buf, dc_last, n, BS)
    for i in range(T):
        t = T - 1 - i
        cur = (i % 2) * N * n
        nxt = ((i + 1) % 2) * N * n
        # -- phase A: the cell, gradients of the second layers' outputs (dpre2) and of c_{t-1}
        for s0 in range(0, n, BS):
            cols, cm, m = col_block(s0, BS, n, rmask)
            soff = rows[:, None] * n + cols[None, :]
            dh = tl.load(dout + t * N * n + soff, mask=m, other=0.0) + tl.load(dh_buf + cur + soff, mask=m, other=0.0)
            aoff = t * N * 4 * n + rows[:, None] * (4 * n) + cols[None, :]
            gi, gf, gg, go = load_gates(acts + aoff, n, m)
            dc = tl.load(dc_buf + cur + soff, mask=m, other=0.0)
            tc = tanh(tl.load(cs + (t + 1) * N * n + soff, mask=m, other=0.0))
            c_prev = tl.load(cs + t * N * n + soff, mask=m, other=0.0)
            d_i, d_f, d_g, d_o, dct = lstm_cell_backward(dh, dc, gi, gf, gg, go, tc, c_prev)
            store_gates(dpre2 + aoff, n, m, d_i, d_f, d_g, d_o)
            tl.store(dc_buf + nxt + soff, dct * gf, mask=m)
        tl.debug_barrier()
        # -- phase B: through each gate's second layer and the ReLU: dpre1 (BN, 4d)
        for g in range(4):
            for d0 in range(0, D, BD):
                dcol, dm, m = col_block(d0, BD, D, rmask)
                acc = matmul_acc(tl.zeros((BN, BD), dtype=dh_buf.dtype.element_ty), dpre2 + t * N * 4 * n + g * n, 4 * n,
                                 w2 + g * n * D, D, 1, rows, rmask, dcol, dm, n, BK, PREC)
                zoff = t * N * 4 * D + rows[:, None] * (4 * D) + g * D + dcol[None, :]
                z = tl.load(zs + zoff, mask=m, other=0.0)
                tl.store(dpre1 + zoff, tl.where(z > 0, acc, 0.0), mask=m)
        tl.debug_barrier()
        # -- phase C: dL/dh_{t-1} = dpre1 W1_hh
        for s0 in range(0, n, BS):
            cols, cm, m = col_block(s0, BS, n, rmask)
            acc = matmul_acc(tl.zeros((BN, BS), dtype=dh_buf.dtype.element_ty), dpre1 + t * N * 4 * D, 4 * D,
                             w1hh, n, 1, rows, rmask, cols, cm, 4 * D, BKD, PREC)
            tl.store(dh_buf + nxt + rows[:, None] * n + cols[None, :], acc, mask=m)
        tl.debug_barrier()
    copy_final_grads(dh0, dc0, dh_buf, dc_buf, T, N, rows, rmask, n, BS)


_forward_kernel = kernel(_hidden_forward)
_backward_kernel = kernel(_hidden_backward)


def _blocks(n: int, d: int) -> dict:
    # BS: state columns per tile, up to 64 (four gate accumulators of BN x BS stay in registers);
    # BD: first-layer units per tile; BK: reduction chunk over the n state inputs; BKD: reduction
    # chunk over the d units of a gate (forward: 16, a larger one aborts the sm_90 compile in float32,
    # spaces/README.md) and the 4d units of all gates (backward).
    return {"BN": BLOCK_ROWS, "BS": block(n, 64), "BD": block(d, 64), "BK": block(n, 32), "BKD": block(d, 16)}


class HiddenRecurrence(torch.autograd.Function):
    """``(out (T, N, n), h_n, c_n)`` of H-LSTM layers over a window from ``xw`` (T, N, 4d) (the first
    layers' input part, bias included), the masked ``w1_hh`` (4d, n), ``w2`` (4, n, d), ``b2`` (4n,)
    or None and the state ``h0, c0`` (N, n). Differentiable in all of them."""

    @staticmethod
    def forward(ctx, xw, w1_hh, w2, b2, h0, c0):
        T, N = xw.shape[0], xw.shape[1]
        n, d = w2.shape[1], w2.shape[2]
        xw, w1_hh, w2, h0, c0 = (t.contiguous() for t in (xw, w1_hh, w2, h0, c0))
        hs, cs = xw.new_empty(T + 1, N, n), xw.new_empty(T + 1, N, n)
        zs, acts = xw.new_empty(T, N, 4 * d), xw.new_empty(T, N, 4 * n)
        h_n, c_n = xw.new_empty(N, n), xw.new_empty(N, n)
        bl = _blocks(n, d)
        _forward_kernel[(cdiv(N, bl["BN"]),)](
            xw, w1_hh, w2, bias_or_zeros(b2, h0), h0, c0, hs, cs, zs, acts, h_n, c_n, T, N,
            NH=n, D=d, PREC=dot_precision(xw.dtype), **bl)
        ctx.save_for_backward(w1_hh, w2, hs, cs, zs, acts)
        return hs[1:], h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hn, d_cn):
        w1_hh, w2, hs, cs, zs, acts = ctx.saved_tensors
        T, N, n = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        d = w2.shape[2]
        d_out, d_hn, d_cn = incoming_grads(hs, d_out, d_hn, d_cn)
        dpre2, dpre1 = hs.new_empty(T, N, 4 * n), hs.new_empty(T, N, 4 * d)
        dh_buf, dc_buf = hs.new_empty(2, N, n), hs.new_empty(2, N, n)
        dh0, dc0 = hs.new_empty(N, n), hs.new_empty(N, n)
        bl = _blocks(n, d)
        # backward reductions: over n (phase B) and over 4d (phase C)
        bl.update(BK=block(n, 64), BKD=block(4 * d, 64))
        _backward_kernel[(cdiv(N, bl["BN"]),)](
            d_out, d_hn, d_cn, cs, zs, acts, w1_hh, w2, dpre2, dpre1, dh_buf, dc_buf, dh0, dc0, T, N,
            NH=n, D=d, PREC=dot_precision(hs.dtype), **bl)
        # Weight gradients for the whole window: three matmuls.
        d_w1 = dpre1.view(T * N, 4 * d).t() @ hs[:-1].reshape(T * N, n)
        d_w2 = torch.bmm(dpre2.view(T * N, 4, n).permute(1, 2, 0), zs.view(T * N, 4, d).transpose(0, 1))
        d_b2 = dpre2.sum((0, 1)) if ctx.needs_input_grad[3] else None  # b2 given (and trained)
        return dpre1, d_w1, d_w2, d_b2, dh0, dc0


def hidden_window(xw: Tensor, w1_hh: Tensor, w2: Tensor, b2: Tensor | None, state: tuple[Tensor, Tensor]
                  ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``HiddenLayer.forward`` on the GPU path, from the window's first-layer input part ``xw``
    (T, N, 4d) and the masked weights; under autocast the recurrence runs in the weights' dtype."""
    h, c = state
    dtype = w2.dtype
    if xw.shape[0] == 0:
        return xw.new_empty(0, h.shape[0], h.shape[1], dtype=dtype), (h, c)
    out, h_n, c_n = HiddenRecurrence.apply(xw.to(dtype), w1_hh, w2, b2, h.to(dtype), c.to(dtype))
    return out, (h_n, c_n)
