"""Hidden-state and soft routing on the GPU path: one persistent Triton kernel per direction and window.

The SqueezeLSTM step with ``hidden`` or ``soft`` routing (``routed.py``) is not an LSTM with a linear
recurrent map: the router reads ``h_{t-1}``, picks (or weighs) the sub-cells, and the state is a
per-sub-cell mix of old and new. Run step by step through autograd it costs ~25 launches a step.
Here one program owns ``BLOCK_ROWS`` sequences for the whole window (sequences are independent)
and loops over time itself; per step it computes

    logits = W_r h_{t-1} + b_r,   p = softmax(z),   z = logits (soft, eval) or (logits + gumbel_t) / tau
    y = p (soft) | onehot(argmax p) (hidden, training) | onehot(argmax logits) (hidden, eval)
    [i f g o]_j = sigma(xw_{t,j} + W_hh_j h_{t-1,j}),  c'_j = f c_j + i g,  h'_j = o tanh(c'_j)
    h_j <- y_j h'_j + (1 - y_j) h_j,   c_j <- y_j c'_j + (1 - y_j) c_j

(hard choices select instead of multiplying). The backward kernel runs the same loop in reverse
with the hand-written gradient: through the mix, the LSTM step, and the router, where the hard
choice takes the straight-through gradient ``d logits = p (dy - <p, dy>) / tau`` of ``y = onehot -
p.detach() + p`` exactly as the reference defines it (none in eval, as argmax has none). The weight
gradients are window-wide matmuls afterwards, from the pre-activation gradients the kernel saves.

A step's state is written to the window's output buffer, and the next step reads it back after a
barrier: Triton cannot slice a register tile by sub-cell, and the recurrent matmul needs
``h_{t-1}`` by sub-cell and in chunks. Launches per layer and window: the kernel, one each way,
plus a fixed ~60 torch ops (input projection, noise, buffers and views, weight gradients), none per step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._triton import BLOCK_ROWS, block, cdiv, dot_precision, incoming_grads, kernel, pow2
from ._triton_common import (col_block, copy_final_grads, copy_states, gate_matmuls, load_gates, lstm_cell,
                             lstm_cell_backward, matmul_acc, store_gates, tanh, window_rows)

try:
    import triton.language as tl
except ImportError:  # the module still imports; kernel() raises a one-line error on first launch
    tl = None

SOFT, STRAIGHT_THROUGH, HARD = 0, 1, 2


def _routed_forward(xw, whh, wr, br, noise, h0, c0, hs, cs, acts, ys, ps, h_n, c_n,
                    T, N, inv_tau,
                    K: tl.constexpr, S: tl.constexpr, MODE: tl.constexpr, HAS_RBIAS: tl.constexpr,
                    BN: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr,
                    KP: tl.constexpr, PREC: tl.constexpr):
    n = K * S
    # h_0, c_0 into slot 0 of the state buffers (slot t + 1 holds the state after step t).
    rows, rmask = window_rows(N, BN, hs, h0, cs, c0, n, BH)
    kr = tl.arange(0, KP)  # the sub-cells, padded to a power of two
    kmask = kr < K
    for t in range(T):
        hp_base = hs + t * N * n
        cp_base = cs + t * N * n
        # -- router: logits (BN, KP) from the whole h_{t-1}
        logits = tl.zeros((BN, KP), dtype=h0.dtype.element_ty)
        for c0_ in range(0, n, BH):
            cols, cm, m = col_block(c0_, BH, n, rmask)
            hch = tl.load(hp_base + rows[:, None] * n + cols[None, :], mask=m, other=0.0)
            wch = tl.load(wr + kr[:, None] * n + cols[None, :], mask=kmask[:, None] & cm[None, :], other=0.0)
            logits += tl.sum(hch[:, None, :] * wch[None, :, :], axis=2)
        if HAS_RBIAS:
            logits += tl.load(br + kr, mask=kmask, other=0.0)[None, :]
        km2 = rmask[:, None] & kmask[None, :]
        koff = t * N * K + rows[:, None] * K + kr[None, :]
        z = logits
        if MODE == 1:
            e = tl.load(noise + koff, mask=km2, other=1.0)
            z = (logits - tl.log(e)) * inv_tau
        z = tl.where(kmask[None, :], z, float("-inf"))
        ez = tl.exp(z - tl.max(z, axis=1)[:, None])
        ez = tl.where(kmask[None, :], ez, 0.0)
        p = ez / tl.sum(ez, axis=1)[:, None]
        if MODE == 0:
            y = p
        else:
            if MODE == 1:
                choice = tl.argmax(p, axis=1, tie_break_left=True)
            else:
                choice = tl.argmax(z, axis=1, tie_break_left=True)
            y = tl.where(kr[None, :] == choice[:, None], 1.0, 0.0).to(p.dtype)
        tl.store(ys + koff, y, mask=km2)
        tl.store(ps + koff, p, mask=km2)
        # -- every sub-cell's candidate update, mixed into the state
        for j in range(K):
            yj = tl.sum(tl.where(kr[None, :] == j, y, 0.0), axis=1)[:, None]  # (BN, 1)
            for s0 in range(0, S, BS):
                cols, cm, m = col_block(s0, BS, S, rmask)
                aoff = t * N * 4 * n + rows[:, None] * (4 * n) + j * 4 * S + cols[None, :]
                a_i, a_f, a_g, a_o = load_gates(xw + aoff, S, m)
                # + h_{t-1,j} W_hh_j^T, gate by gate: W_hh_j's gate rows (cols) by kk at whh_j + gate * S * S
                a_i, a_f, a_g, a_o = gate_matmuls(a_i, a_f, a_g, a_o, hp_base + j * S, n, whh + j * 4 * S * S, 1, S, S * S,
                                                  rows, rmask, cols, cm, S, BK, PREC)
                soff = rows[:, None] * n + j * S + cols[None, :]
                cp = tl.load(cp_base + soff, mask=m, other=0.0)
                hp = tl.load(hp_base + soff, mask=m, other=0.0)
                gi, gf, gg, go, cn, hn = lstm_cell(a_i, a_f, a_g, a_o, cp)
                if MODE == 0:
                    hnew = yj * hn + (1.0 - yj) * hp
                    cnew = yj * cn + (1.0 - yj) * cp
                else:
                    hnew = tl.where(yj > 0.5, hn, hp)
                    cnew = tl.where(yj > 0.5, cn, cp)
                tl.store(hs + (t + 1) * N * n + soff, hnew, mask=m)
                tl.store(cs + (t + 1) * N * n + soff, cnew, mask=m)
                store_gates(acts + aoff, S, m, gi, gf, gg, go)
        tl.debug_barrier()  # step t's state is complete before step t + 1 reads it
    copy_states(h_n, hs + T * N * n, c_n, cs + T * N * n, rows, rmask, n, BH)


def _routed_backward(dout, dh_last, dc_last, hs, cs, acts, ys, ps, whh, wr,
                     dpre, dlog, dh_buf, dc_buf, dh0, dc0,
                     T, N, inv_tau,
                     K: tl.constexpr, S: tl.constexpr, MODE: tl.constexpr,
                     BN: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BH: tl.constexpr,
                     KP: tl.constexpr, PREC: tl.constexpr):
    n = K * S
    kr = tl.arange(0, KP)
    kmask = kr < K
    # dh_buf / dc_buf (2, N, n): the gradient reaching the state after the step being processed,
    # double-buffered by step parity so that a step never overwrites what it is reading.
    rows, rmask = window_rows(N, BN, dh_buf, dh_last, dc_buf, dc_last, n, BH)
    for i in range(T):
        t = T - 1 - i
        cur = (i % 2) * N * n
        nxt = ((i + 1) % 2) * N * n
        km2 = rmask[:, None] & kmask[None, :]
        koff = t * N * K + rows[:, None] * K + kr[None, :]
        y = tl.load(ys + koff, mask=km2, other=0.0)
        dy = tl.zeros((BN, KP), dtype=y.dtype)
        # -- phase A: gradients of the pre-activations and of c_{t-1}, and dL/dy
        for j in range(K):
            yj = tl.sum(tl.where(kr[None, :] == j, y, 0.0), axis=1)[:, None]
            for s0 in range(0, S, BS):
                cols, cm, m = col_block(s0, BS, S, rmask)
                soff = rows[:, None] * n + j * S + cols[None, :]
                dh = tl.load(dout + t * N * n + soff, mask=m, other=0.0) + tl.load(dh_buf + cur + soff, mask=m, other=0.0)
                dc = tl.load(dc_buf + cur + soff, mask=m, other=0.0)
                aoff = t * N * 4 * n + rows[:, None] * (4 * n) + j * 4 * S + cols[None, :]
                gi, gf, gg, go = load_gates(acts + aoff, S, m)
                cp = tl.load(cs + t * N * n + soff, mask=m, other=0.0)
                cn = gf * cp + gi * gg
                tc = tanh(cn)
                if MODE == 0:
                    dhn = yj * dh
                    dcn = yj * dc
                else:
                    dhn = tl.where(yj > 0.5, dh, 0.0)
                    dcn = tl.where(yj > 0.5, dc, 0.0)
                if MODE != 2:
                    hp = tl.load(hs + t * N * n + soff, mask=m, other=0.0)
                    part = tl.sum(dh * (go * tc - hp) + dc * (cn - cp), axis=1)
                    dy += tl.where(kr[None, :] == j, part[:, None], 0.0)
                d_i, d_f, d_g, d_o, dct = lstm_cell_backward(dhn, dcn, gi, gf, gg, go, tc, cp)
                store_gates(dpre + aoff, S, m, d_i, d_f, d_g, d_o)
                # c_{t-1}'s gradient, and the part of h_{t-1}'s that the mix keeps (phase B adds the rest)
                if MODE == 0:
                    dcp = (1.0 - yj) * dc + dct * gf
                    dhp = (1.0 - yj) * dh
                else:
                    dcp = tl.where(yj > 0.5, dct * gf, dc)
                    dhp = tl.where(yj > 0.5, 0.0, dh)
                tl.store(dc_buf + nxt + soff, dcp, mask=m)
                tl.store(dh_buf + nxt + soff, dhp, mask=m)
        # -- the router's gradient: softmax backward of dL/dp = dL/dy (straight-through for hard y)
        dl = tl.zeros((BN, KP), dtype=y.dtype)
        if MODE != 2:
            p = tl.load(ps + koff, mask=km2, other=0.0)
            dl = p * (dy - tl.sum(p * dy, axis=1)[:, None])
            if MODE == 1:
                dl = dl * inv_tau
            tl.store(dlog + koff, dl, mask=km2)
        tl.debug_barrier()  # the step's dpre (and kept part) is complete before the matmul below reads it by sub-cell
        # -- phase B: dL/dh_{t-1} = kept part + dpre_j W_hh_j + dlogits W_r
        for j in range(K):
            for s0 in range(0, S, BS):
                cols, cm, m = col_block(s0, BS, S, rmask)
                soff = rows[:, None] * n + j * S + cols[None, :]
                acc = tl.load(dh_buf + nxt + soff, mask=m, other=0.0)
                acc = matmul_acc(acc, dpre + t * N * 4 * n + j * 4 * S, 4 * n, whh + j * 4 * S * S, S, 1,
                                 rows, rmask, cols, cm, 4 * S, BK, PREC)
                if MODE != 2:
                    wrc = tl.load(wr + kr[:, None] * n + j * S + cols[None, :], mask=kmask[:, None] & cm[None, :], other=0.0)
                    acc += tl.sum(dl[:, :, None] * wrc[None, :, :], axis=1)
                tl.store(dh_buf + nxt + soff, acc, mask=m)
        tl.debug_barrier()
    copy_final_grads(dh0, dc0, dh_buf, dc_buf, T, N, rows, rmask, n, BH)


_forward_kernel = kernel(_routed_forward)
_backward_kernel = kernel(_routed_backward)


def _blocks(k: int, s: int) -> dict:
    # BS: a sub-cell's gate columns per tile, the whole sub-cell up to 64 (4 gate accumulators of
    # BN x BS stay in registers); BH: columns of the whole state per chunk for the router's k-wide
    # products and the copies; KP: k padded for tl.arange. BK, the recurrent matmul's reduction chunk,
    # is set per direction by the caller: over the sub-cell's s inputs (forward, up to 16: four weight
    # tiles a chunk; a larger one aborts the sm_90 compile in float32, spaces/README.md) and its 4s gate
    # rows (backward, up to 64: one weight tile a chunk).
    return {"BN": BLOCK_ROWS, "BS": block(s, 64), "BH": block(k * s, 64), "KP": pow2(k)}


class RoutedRecurrence(torch.autograd.Function):
    """``(out (T, N, n), h_n, c_n)`` of routed sub-cells over a window, from the input projections
    ``xw`` (T, N, 4n) (biases included), ``weight_hh`` (k, 4s, s), the router ``router_weight`` (k, n)
    and ``router_bias`` (k,) or None, Gumbel ``noise`` (T, N, k) exponential samples (straight-through
    mode only) and the state ``h0, c0`` (N, n). Differentiable in all but the noise."""

    @staticmethod
    def forward(ctx, xw, weight_hh, router_weight, router_bias, noise, h0, c0, mode: int, tau: float):
        T, N = xw.shape[0], xw.shape[1]
        k, s = weight_hh.shape[0], weight_hh.shape[2]
        n = k * s
        xw, weight_hh, router_weight, h0, c0 = (t.contiguous() for t in (xw, weight_hh, router_weight, h0, c0))
        hs = xw.new_empty(T + 1, N, n)
        cs = xw.new_empty(T + 1, N, n)
        acts = xw.new_empty(T, N, 4 * n)
        ys = xw.new_empty(T, N, k)
        ps = xw.new_empty(T, N, k)
        h_n, c_n = xw.new_empty(N, n), xw.new_empty(N, n)
        has_rbias = router_bias is not None
        bl = _blocks(k, s)
        _forward_kernel[(cdiv(N, bl["BN"]),)](
            xw, weight_hh, router_weight, router_bias if has_rbias else router_weight,
            noise if noise is not None else ys, h0, c0, hs, cs, acts, ys, ps, h_n, c_n,
            T, N, 1.0 / tau, K=k, S=s, MODE=mode, HAS_RBIAS=has_rbias, BK=block(s, 16),
            PREC=dot_precision(xw.dtype), **bl)
        ctx.save_for_backward(weight_hh, router_weight, hs, cs, acts, ys, ps)
        ctx.mode, ctx.tau = mode, tau
        return hs[1:], h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hn, d_cn):
        weight_hh, router_weight, hs, cs, acts, ys, ps = ctx.saved_tensors
        T, N, n = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        k, s = weight_hh.shape[0], weight_hh.shape[2]
        d_out, d_hn, d_cn = incoming_grads(hs, d_out, d_hn, d_cn)
        dpre = hs.new_empty(T, N, 4 * n)
        dlog = hs.new_zeros(T, N, k) if ctx.mode != HARD else ys
        dh_buf, dc_buf = hs.new_empty(2, N, n), hs.new_empty(2, N, n)
        dh0, dc0 = hs.new_empty(N, n), hs.new_empty(N, n)
        bl = _blocks(k, s)
        _backward_kernel[(cdiv(N, bl["BN"]),)](
            d_out, d_hn, d_cn, hs, cs, acts, ys, ps, weight_hh, router_weight,
            dpre, dlog, dh_buf, dc_buf, dh0, dc0, T, N, 1.0 / ctx.tau,
            K=k, S=s, MODE=ctx.mode, BK=block(4 * s, 64), PREC=dot_precision(hs.dtype), **bl)
        # Weight gradients for the whole window: dW_hh_j = sum_{t,b} dpre_j^T h_{t-1,j}, one bmm.
        h_prev = hs[:-1].reshape(T * N, k, s).transpose(0, 1)  # (k, TN, s)
        d_whh = torch.bmm(dpre.view(T * N, k, 4 * s).permute(1, 2, 0), h_prev)
        d_wr = d_br = None
        if ctx.mode != HARD:
            d_wr = dlog.view(T * N, k).t() @ hs[:-1].reshape(T * N, n)
            d_br = dlog.sum((0, 1)) if ctx.needs_input_grad[3] else None  # router_bias given (and trained)
        return dpre, d_whh, d_wr, d_br, None, dh0, dc0, None, None


def routed_window(layer, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """``RoutedLayer.forward`` for ``hidden``/``soft`` routing with k > 1 on the GPU path."""
    h, c = state
    T, N = x.shape[0], x.shape[1]
    dtype = layer.weight_hh.dtype  # under autocast the recurrence still runs in the parameters' dtype
    xw = torch.nn.functional.linear(x, layer.weight_ih, layer.bias_ih)
    if layer.bias_hh is not None:
        xw = xw + layer.bias_hh
    noise = None
    if layer.routing == "soft":
        mode = SOFT
    elif layer.training:
        mode = STRAIGHT_THROUGH
        # One draw of the window's (T, N, k) exponential samples; on the CPU this is the same stream
        # as the reference's one (N, k) draw a step. The kernel takes -log of them (Gumbel noise).
        noise = torch.empty(T, N, layer.num_cells, dtype=dtype, device=x.device).exponential_(generator=layer.generator)
    else:
        mode = HARD
    if T == 0:
        return xw.new_empty(0, N, layer.hidden_size).to(dtype), (h, c)
    out, h_n, c_n = RoutedRecurrence.apply(xw.to(dtype), layer.weight_hh, layer.router_weight, layer.router_bias,
                                           noise, h.to(dtype), c.to(dtype), mode, float(layer.gumbel_tau))
    return out, (h_n, c_n)
