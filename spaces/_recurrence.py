"""A fast LSTM recurrence with a hand-written backward, for families whose recurrent map is linear.

Families whose step is "an LSTM update with a structured recurrent matrix" (G-LSTM: block-diagonal,
F-LSTM: low rank) cannot use torch's fused LSTM kernel without expanding that matrix, which gives
their saved multiply-adds back. Run through autograd step by step, the ~15 element-wise ops of every
step each record a graph node and dominate small models. This module runs the recurrence as ONE
autograd node instead:

    pre_t = xw_t + h_{t-1} F_1 F_2 ... F_L          (batched over G independent groups)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),    h_t = sigmoid(o) * tanh(c_t)

with ``xw`` (T, G, N, 4s) the input projections of the whole window (computed by the caller with
ordinary autograd, one big matmul), ``h, c`` (G, N, s) and factors ``F_l`` (G, a_l, b_l) chaining
s -> ... -> 4s (gate columns i, f, g, o of each group). The forward loop runs without autograd,
writing into preallocated buffers; the backward loop computes the gate gradients step by step and
the factors' gradients afterwards as one batched matmul over the whole window.

``linear_recurrence(xw, h0, c0, factors) -> (hs (T, G, N, s), h_T, c_T)`` is the entry point.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _chain(h: Tensor, factors: tuple[Tensor, ...], out_add: Tensor) -> Tensor:
    """``out_add + h F_1 ... F_L`` (batched over the leading group dim)."""
    for f in factors[:-1]:
        h = torch.bmm(h, f)
    return torch.baddbmm(out_add, h, factors[-1])


class _LinearRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xw: Tensor, h0: Tensor, c0: Tensor, *factors: Tensor):
        steps = xw.size(0)
        s = h0.size(-1)
        hs = xw.new_empty((steps + 1,) + tuple(h0.shape))
        cs = torch.empty_like(hs)
        tcs = xw.new_empty((steps,) + tuple(h0.shape))  # tanh(c_t), reused by the backward
        acts = torch.empty_like(xw)  # sigmoid(i), sigmoid(f), tanh(g), sigmoid(o) per step
        hs[0] = h0
        cs[0] = c0
        for t in range(steps):
            pre = _chain(hs[t], factors, xw[t])
            a = acts[t]
            torch.sigmoid(pre, out=a)
            torch.tanh(pre[..., 2 * s:3 * s], out=a[..., 2 * s:3 * s])
            i, f, g, o = a.split(s, dim=-1)
            c = cs[t + 1]
            torch.mul(f, cs[t], out=c)
            c.addcmul_(i, g)
            torch.tanh(c, out=tcs[t])
            torch.mul(o, tcs[t], out=hs[t + 1])
        ctx.save_for_backward(hs, cs, tcs, acts, *factors)
        # Clones: the buffers are saved for backward and must not alias tensors the caller may modify.
        return hs[1:].clone(), hs[steps].clone(), cs[steps].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None):
        hs, cs, tcs, acts, *factors = ctx.saved_tensors
        steps = acts.size(0)
        s = hs.size(-1)
        dh = torch.zeros_like(hs[0]) if d_hn is None else d_hn.clone()
        dc = torch.zeros_like(cs[0]) if d_cn is None else d_cn.clone()
        dgates = torch.empty_like(acts)
        back = [f.transpose(1, 2) for f in reversed(factors)]  # 4s -> ... -> s
        tmp = torch.empty_like(dh)
        for t in range(steps - 1, -1, -1):
            if d_out is not None:
                dh.add_(d_out[t])
            a = acts[t]
            i, f, g, o = a.split(s, dim=-1)
            tc = tcs[t]
            # dc += dh * o * (1 - tanh(c)^2)
            torch.addcmul(torch.ones((), dtype=tc.dtype, device=tc.device), tc, tc, value=-1.0, out=tmp)
            tmp.mul_(o).mul_(dh)
            dc.add_(tmp)
            dg = dgates[t]
            di, df, dgg, do = dg.split(s, dim=-1)
            torch.mul(dc, g, out=di)
            torch.mul(dc, cs[t], out=df)
            torch.mul(dc, i, out=dgg)
            torch.mul(dh, tc, out=do)
            # Activation derivatives: a(1 - a) for the sigmoids, 1 - a^2 for tanh(g).
            deriv = torch.addcmul(a, a, a, value=-1.0)
            torch.addcmul(torch.ones((), dtype=g.dtype, device=g.device), g, g, value=-1.0,
                          out=deriv[..., 2 * s:3 * s])
            dg.mul_(deriv)
            dc.mul_(f)
            if t > 0 or ctx.needs_input_grad[1]:
                x = dg
                for w in back[:-1]:
                    x = torch.bmm(x, w)
                dh = torch.bmm(x, back[-1])
        d_factors = []
        if any(ctx.needs_input_grad[3:]):
            groups, batch = hs.size(1), hs.size(2)
            # Whole-window matmuls: H (G, T*N, s) and dG (G, T*N, 4s), group-major.
            h_prev = hs[:-1].transpose(0, 1).reshape(groups, steps * batch, s)
            d_pre = dgates.transpose(0, 1).reshape(groups, steps * batch, dgates.size(-1))
            # Activations entering each factor, forward: u_0 = H, u_l = u_{l-1} F_l.
            inputs = [h_prev]
            for fct in factors[:-1]:
                inputs.append(torch.bmm(inputs[-1], fct))
            grad = d_pre
            for idx in range(len(factors) - 1, -1, -1):
                d_factors.append(torch.bmm(inputs[idx].transpose(1, 2), grad))
                if idx > 0:
                    grad = torch.bmm(grad, factors[idx].transpose(1, 2))
            d_factors.reverse()
        else:
            d_factors = [None] * len(factors)
        return (dgates, dh, dc, *d_factors)


def linear_recurrence(xw: Tensor, h0: Tensor, c0: Tensor, factors: tuple[Tensor, ...] | list[Tensor]):
    """Run the LSTM recurrence ``pre_t = xw_t + h_{t-1} F_1 ... F_L`` over a window; differentiable.

    ``xw`` (T, G, N, 4s); ``h0``, ``c0`` (G, N, s); ``factors`` (G, a, b) with a chain s -> 4s.
    Returns ``(hs, h_T, c_T)``: every step's hidden state (T, G, N, s) and the final state.
    """
    if xw.size(0) == 0:
        return xw.new_empty((0,) + tuple(h0.shape)), h0, c0
    return _LinearRecurrence.apply(xw.contiguous(), h0.contiguous(), c0.contiguous(), *factors)
