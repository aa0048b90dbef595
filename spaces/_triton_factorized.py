"""F-LSTM's low-rank recurrence on the GPU path from hidden 1024: one Triton launch per step and direction.

Below ``_fused.PRODUCT_MAX_HIDDEN`` the CUDA path runs F-LSTM as the dense LSTM with gate matrix
W2 W1 (one cuDNN call, the dense multiply-adds). From that width on multiply-adds dominate, so the
F-LSTM keeps its own count, r(m + n) + 4nr a token:

    z_t = xz_t + h_{t-1} A              xz_t = W1_x x_t (window-wide, outside), A = W1_h^T: (n, r)
    [i f g o] = act(z_t B + b),  c_t = f c_{t-1} + i g,  h_t = o tanh(c_t)        B = W2^T: (r, 4n)

A persistent kernel (as for the routed and H-LSTM steps) would run these matmuls on a couple of
programs; here every step is one launch over (batch blocks x column tiles of the state), which
spreads the step over the GPU. Each program computes its columns' gates from the complete z_t and
adds its share of the next step's bottleneck, ``h_t[:, cols] A[cols, :]``, into z_{t+1} with atomic
adds (split-K over the state's columns): one launch a step, and the backward likewise (its programs
add ``dpre[:, cols] B[:, cols]^T`` into dz_t). The atomic adds make the sums' order, and so the last
bits of float32 results, vary from run to run. Weight gradients are window-wide matmuls afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._triton import BLOCK_ROWS, bias_or_zeros, block, cdiv, dot_precision, incoming_grads, kernel
from ._triton_common import (col_block, gate_accumulators, gate_matmuls, load_gates, lstm_cell, lstm_cell_backward,
                             matmul_acc, row_block, store_gates, tanh)

try:
    import triton.language as tl
except ImportError:  # the module still imports; kernel() raises a one-line error on first launch
    tl = None


def _bottleneck_step(zs, a, b, bias, hs, cs, acts, h_n, c_n, t, T, N,
                     NH: tl.constexpr, R: tl.constexpr,
                     BN: tl.constexpr, BS: tl.constexpr, BR: tl.constexpr, PREC: tl.constexpr):
    n = NH
    rows, rmask = row_block(N, BN)
    cols, cm, m = col_block(tl.program_id(1) * BS, BS, n, rmask)
    a_i, a_f, a_g, a_o = gate_accumulators(bias, n, cols, cm, BN, BS, hs.dtype.element_ty)
    # + z_t B: B's (rr, gate cols) at b + rr * 4n + gate * n + cols
    a_i, a_f, a_g, a_o = gate_matmuls(a_i, a_f, a_g, a_o, zs + t * N * R, R, b, 4 * n, 1, n,
                                      rows, rmask, cols, cm, R, BR, PREC)
    soff = rows[:, None] * n + cols[None, :]
    gi, gf, gg, go, c, h = lstm_cell(a_i, a_f, a_g, a_o, tl.load(cs + t * N * n + soff, mask=m, other=0.0))
    h = tl.where(m, h, 0.0)
    tl.store(hs + (t + 1) * N * n + soff, h, mask=m)
    tl.store(cs + (t + 1) * N * n + soff, c, mask=m)
    if t == T - 1:
        tl.store(h_n + soff, h, mask=m)
        tl.store(c_n + soff, c, mask=m)
    store_gates(acts + t * N * 4 * n + rows[:, None] * (4 * n) + cols[None, :], n, m, gi, gf, gg, go)
    if t + 1 < T:  # this program's share of z_{t+1} = xz_{t+1} + h_t A
        for r0 in range(0, R, BR):
            rr, rm, zm = col_block(r0, BR, R, rmask)
            part = tl.dot(h, tl.load(a + cols[:, None] * R + rr[None, :], mask=cm[:, None] & rm[None, :], other=0.0),
                          input_precision=PREC)
            tl.atomic_add(zs + (t + 1) * N * R + rows[:, None] * R + rr[None, :], part, mask=zm)


def _bottleneck_step_backward(dout, dh_last, dzs, dc, a, b, cs, acts, dpre, t, T, N,
                              NH: tl.constexpr, R: tl.constexpr,
                              BN: tl.constexpr, BS: tl.constexpr, BR: tl.constexpr, PREC: tl.constexpr):
    n = NH
    rows, rmask = row_block(N, BN)
    cols, cm, m = col_block(tl.program_id(1) * BS, BS, n, rmask)
    soff = rows[:, None] * n + cols[None, :]
    # dL/dh_t: the output's gradient plus dz_{t+1} A^T (complete: step t + 1's launch has finished),
    # or at the window's last step the final state's gradient.
    dh = tl.load(dout + t * N * n + soff, mask=m, other=0.0)
    if t == T - 1:
        dh += tl.load(dh_last + soff, mask=m, other=0.0)
    else:
        dh = matmul_acc(dh, dzs + (t + 1) * N * R, R, a, 1, R, rows, rmask, cols, cm, R, BR, PREC)  # A[cols, rr]^T
    dcv = tl.load(dc + soff, mask=m, other=0.0)  # dL/dc_t; only this program reads and writes these entries
    aoff = t * N * 4 * n + rows[:, None] * (4 * n) + cols[None, :]
    gi, gf, gg, go = load_gates(acts + aoff, n, m)
    tc = tanh(tl.load(cs + (t + 1) * N * n + soff, mask=m, other=0.0))
    c_prev = tl.load(cs + t * N * n + soff, mask=m, other=0.0)
    d_i, d_f, d_g, d_o, dct = lstm_cell_backward(dh, dcv, gi, gf, gg, go, tc, c_prev)
    d_i = tl.where(m, d_i, 0.0)
    d_f = tl.where(m, d_f, 0.0)
    d_g = tl.where(m, d_g, 0.0)
    d_o = tl.where(m, d_o, 0.0)
    store_gates(dpre + aoff, n, m, d_i, d_f, d_g, d_o)
    tl.store(dc + soff, dct * gf, mask=m)
    # this program's share of dz_t = dpre_t B^T
    for r0 in range(0, R, BR):
        rr, rm, zm = col_block(r0, BR, R, rmask)
        bp = b + rr[None, :] * (4 * n) + cols[:, None]  # B[rr, gate cols]^T: (BS, BR)
        bm = cm[:, None] & rm[None, :]
        part = tl.dot(d_i, tl.load(bp, mask=bm, other=0.0), input_precision=PREC)
        part += tl.dot(d_f, tl.load(bp + n, mask=bm, other=0.0), input_precision=PREC)
        part += tl.dot(d_g, tl.load(bp + 2 * n, mask=bm, other=0.0), input_precision=PREC)
        part += tl.dot(d_o, tl.load(bp + 3 * n, mask=bm, other=0.0), input_precision=PREC)
        tl.atomic_add(dzs + t * N * R + rows[:, None] * R + rr[None, :], part, mask=zm)


_step_kernel = kernel(_bottleneck_step)
_step_backward_kernel = kernel(_bottleneck_step_backward)


def _blocks(n: int, r: int) -> dict:
    # BS: state columns per program, up to 64 (four gate accumulators of BN x BS in registers; at
    # n = 1024 and batch 32 that is 2 x 16 = 32 programs a step); BR: the bottleneck's chunk, 16 in
    # the forward (a larger one aborts the sm_90 compile in float32, spaces/README.md; the backward's is 64).
    return {"BN": BLOCK_ROWS, "BS": block(n, 64), "BR": block(r, 16)}


class BottleneckRecurrence(torch.autograd.Function):
    """``(out (T, N, n), h_n, c_n)`` of F-LSTM layers over a window from ``xz`` (T, N, r), ``a_in``
    (n, r), ``b_out`` (r, 4n), ``bias`` (4n,) or None and the state ``h0, c0`` (N, n)."""

    @staticmethod
    def forward(ctx, xz, h0, c0, a_in, b_out, bias):
        T, N, r = xz.shape
        n = h0.shape[1]
        a_in, b_out, h0, c0 = (t.contiguous() for t in (a_in, b_out, h0, c0))
        zs = xz.contiguous().clone()  # z_t accumulates here: its x side now, h_{t-1} A from the kernels
        zs[0].addmm_(h0, a_in)
        hs, cs = xz.new_empty(T + 1, N, n), xz.new_empty(T + 1, N, n)
        hs[0], cs[0] = h0, c0
        acts = xz.new_empty(T, N, 4 * n)
        h_n, c_n = xz.new_empty(N, n), xz.new_empty(N, n)
        bl = _blocks(n, r)
        grid = (cdiv(N, bl["BN"]), cdiv(n, bl["BS"]))
        prec = dot_precision(xz.dtype)
        bias_ = bias_or_zeros(bias, h0)
        for t in range(T):
            _step_kernel[grid](zs, a_in, b_out, bias_, hs, cs, acts, h_n, c_n, t, T, N, NH=n, R=r, PREC=prec, **bl)
        ctx.save_for_backward(a_in, b_out, zs, hs, cs, acts)
        return hs[1:], h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hn, d_cn):
        a_in, b_out, zs, hs, cs, acts = ctx.saved_tensors
        T, N, r = zs.shape
        n = hs.shape[2]
        d_out, d_hn, d_cn = incoming_grads(hs, d_out, d_hn, d_cn)
        dc = d_cn.clone()  # dL/dc_t, updated in place by the kernels step by step
        dzs = zs.new_zeros(T, N, r)
        dpre = hs.new_empty(T, N, 4 * n)
        bl = _blocks(n, r)
        bl.update(BR=block(r, 64))
        grid = (cdiv(N, bl["BN"]), cdiv(n, bl["BS"]))
        prec = dot_precision(hs.dtype)
        for t in range(T - 1, -1, -1):
            _step_backward_kernel[grid](d_out, d_hn, dzs, dc, a_in, b_out, cs, acts, dpre, t, T, N,
                                        NH=n, R=r, PREC=prec, **bl)
        dz = dzs.view(T * N, r)
        d_h0 = dzs[0] @ a_in.t()
        d_a = hs[:-1].reshape(T * N, n).t() @ dz
        d_b = zs.view(T * N, r).t() @ dpre.view(T * N, 4 * n)
        d_bias = dpre.sum((0, 1)) if ctx.needs_input_grad[5] else None  # bias given (and trained)
        return dzs, d_h0, dc, d_a, d_b, d_bias


def bottleneck_window(xz: Tensor, h: Tensor, c: Tensor, a_in: Tensor, b_out: Tensor, bias: Tensor | None
                      ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``FactorizedLSTMLayer.forward`` on the GPU path from hidden ``PRODUCT_MAX_HIDDEN``: ``xz`` (T, N, r)
    the window's x side of the bottleneck; the recurrence runs in ``b_out``'s dtype (also under autocast)."""
    dtype = b_out.dtype
    if xz.shape[0] == 0:
        return xz.new_empty(0, h.shape[0], h.shape[1], dtype=dtype), (h, c)
    out, h_n, c_n = BottleneckRecurrence.apply(xz.to(dtype), h.to(dtype), c.to(dtype), a_in, b_out, bias)
    return out, (h_n, c_n)
