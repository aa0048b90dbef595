"""A fast LSTM recurrence with a hand-written backward, for families whose recurrent map is linear.

Families whose step is "an LSTM update with a structured recurrent matrix" (G-LSTM: block-diagonal,
F-LSTM: low rank) cannot use torch's fused LSTM kernel without expanding that matrix, which gives
their saved multiply-adds back. Run through autograd step by step, the ~15 element-wise ops of every
step each record a graph node and dominate small models. This module runs the recurrence as ONE
autograd node instead:

    pre_t = xw_t + h_{t-1} F_1 F_2 ... F_L          (batched over G independent groups)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),    h_t = sigmoid(o) * tanh(c_t)

with ``xw`` (G, T, N, 4s) the input projections of the whole window (computed by the caller with
ordinary autograd, one big matmul; or, with ``x_weight``, computed inside the loop from the layer
input, one matmul per group a step, as G-LSTM does), ``h, c`` (G, N, s) and factors ``F_l`` (G, a_l, b_l) chaining
s -> ... -> 4s (gate columns i, f, g, o of each group). The forward loop runs without autograd,
writing into preallocated buffers; the backward loop computes the gate gradients step by step and
the factors' gradients afterwards as one batched matmul over the whole window.

``linear_recurrence(xw, h0, c0, factors) -> (out (T, N, G*s), h_T, c_T)`` is the entry point.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._base import State
from ._kernels import kernels
from .lstm import fused_lstm


def compiled_kernels(*tensors: Tensor):
    """The compiled loops if they can run these tensors (CPU, float32/64), else ``None``."""
    if all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors):
        return kernels()
    return None


def _chain(h: Tensor, factors: tuple[Tensor, ...], out_add: Tensor) -> Tensor:
    """``out_add + h F_1 ... F_L`` (batched over the leading group dim)."""
    for f in factors[:-1]:
        h = torch.bmm(h, f)
    return torch.baddbmm(out_add, h, factors[-1])


def _cell_forward(pre: Tensor, c_prev: Tensor, a: Tensor, c: Tensor, tc: Tensor, h: Tensor) -> None:
    """The LSTM's element-wise step, written into buffers: activations ``a``, ``c``, ``tanh(c)``, ``h``."""
    s = c.size(-1)
    torch.sigmoid(pre, out=a)
    torch.tanh(pre[..., 2 * s:3 * s], out=a[..., 2 * s:3 * s])
    i, f, g, o = a.split(s, dim=-1)
    torch.mul(f, c_prev, out=c)
    c.addcmul_(i, g)
    torch.tanh(c, out=tc)
    torch.mul(o, tc, out=h)


def _backward_tables(acts: Tensor, c_prev: Tensor, tcs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Everything the backward needs that does not depend on the incoming gradient, for the whole
    window at once (a few large element-wise ops instead of many small ones a step):

    ``p`` (..., 3s): d pre_{i,f,g} / d c_t = [tanh(g) i(1-i), c_{t-1} f(1-f), i (1 - tanh(g)^2)];
    ``q`` (..., s): d pre_o / d h_t = tanh(c_t) o(1-o);  ``r`` (..., s): d c_t / d h_t = o (1 - tanh(c_t)^2).
    """
    s = tcs.size(-1)
    i, f, g, o = acts.split(s, dim=-1)
    p = torch.empty(acts.shape[:-1] + (3 * s,), dtype=acts.dtype, device=acts.device)
    p_i, p_f, p_g = p.split(s, dim=-1)
    torch.addcmul(i, i, i, value=-1.0, out=p_i).mul_(g)
    torch.addcmul(f, f, f, value=-1.0, out=p_f).mul_(c_prev)
    one = torch.ones((), dtype=acts.dtype, device=acts.device)
    torch.addcmul(one, g, g, value=-1.0, out=p_g).mul_(i)
    q = torch.addcmul(o, o, o, value=-1.0).mul_(tcs)
    r = torch.addcmul(one, tcs, tcs, value=-1.0).mul_(o)
    return p, q, r


def _cell_backward(dh: Tensor, dc: Tensor, p: Tensor, q: Tensor, r: Tensor, f: Tensor, dg: Tensor) -> None:
    """Gradient of one element-wise step (tables from ``_backward_tables``): writes the pre-activation
    gradient into ``dg`` and turns ``dc`` (the gradient reaching c_t from later steps) into the
    gradient w.r.t. c_{t-1}."""
    s = dh.size(-1)
    dc.addcmul_(dh, r)
    torch.mul(dc.unsqueeze(-2), p.unflatten(-1, (3, s)), out=dg[..., : 3 * s].unflatten(-1, (3, s)))
    torch.mul(dh, q, out=dg[..., 3 * s:])
    dc.mul_(f)


def _linear_backward_loop(d_out, d_hn, d_cn, hs, cs, tcs, acts, keep, factors, need_dh0: bool):
    """The backward time loop of ``_LinearRecurrence`` in Python (the compiled op's specification):
    returns the pre-activation gradients (G, T, N, 4s) and the gradients w.r.t. ``h0``, ``c0``."""
    groups, steps, batch, four_s = acts.shape
    s = hs.size(-1)
    dh = torch.zeros_like(hs[:, 0]) if d_hn is None else d_hn.clone()
    dc = torch.zeros_like(cs[:, 0]) if d_cn is None else d_cn.clone()
    if d_out is not None:
        d_out = d_out.view(steps, batch, groups, s)
    dgates = torch.empty_like(acts)
    back = [f.transpose(1, 2) for f in reversed(factors)]  # 4s -> ... -> s
    p, q, r = _backward_tables(acts, cs[:, :-1], tcs)
    forget = acts[..., s:2 * s]
    for t in range(steps - 1, -1, -1):
        if d_out is not None:
            dh.add_(d_out[t].transpose(0, 1))
        dg = dgates[:, t]
        if keep is not None:
            # Kept units pass their gradient straight to the previous step; updated ones
            # go through the cell.
            k = keep[:, t].to(dh.dtype)
            dh_pass, dc_pass = dh - dh * k, dc - dc * k
            dh.mul_(k)
            dc.mul_(k)
        _cell_backward(dh, dc, p[:, t], q[:, t], r[:, t], forget[:, t], dg)
        if keep is not None:
            dc.add_(dc_pass)
        if t > 0 or need_dh0:
            x = dg
            for w in back[:-1]:
                x = torch.bmm(x, w)
            dh = torch.bmm(x, back[-1]) if keep is None else torch.baddbmm(dh_pass, x, back[-1])
    return dgates, dh, dc


class _LinearRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xw: Tensor, h0: Tensor, c0: Tensor, keep: Tensor | None, bias: Tensor | None,
                x_weight: Tensor | None, *factors: Tensor):
        groups, s = h0.size(0), h0.size(-1)
        ops = compiled_kernels(xw, *factors) if len(factors) == 1 else None
        ctx.compiled = ops is not None
        ctx.has_bias = bias is not None
        # with x_weight, xw is the input x (T, N, G*m_g) and the input side is computed here
        x = xw if x_weight is not None else None
        if ops is not None:
            hs, cs, tcs, acts = ops.linear_forward(xw, h0.contiguous(), c0.contiguous(), keep, bias, factors[0],
                                                   x_weight)
        else:
            if x is not None:
                xw = group_projection(x, x_weight)
            # Group-major buffers (G, T, N, .): a step's slice [:, t] is a strided batch that bmm and the
            # element-wise ops take as it is, and the whole window of a group is one (T*N, .) matrix
            # for the weight gradients, so no layout copies are needed.
            groups, steps, batch, four_s = xw.shape
            hs = xw.new_empty(groups, steps + 1, batch, s)
            cs = torch.empty_like(hs)
            tcs = xw.new_empty(groups, steps, batch, s)  # tanh(c_t), reused by the backward
            acts = torch.empty_like(xw)  # sigmoid(i), sigmoid(f), tanh(g), sigmoid(o) per step
            hs[:, 0] = h0
            cs[:, 0] = c0
            if bias is not None:
                xw = xw + bias.view(groups, 1, 1, four_s)
            for t in range(steps):
                pre = _chain(hs[:, t], factors, xw[:, t])
                _cell_forward(pre, cs[:, t], acts[:, t], cs[:, t + 1], tcs[:, t], hs[:, t + 1])
                if keep is not None:
                    # Units not updated this step keep their state (exact aliasing of out and input).
                    torch.where(keep[:, t], hs[:, t + 1], hs[:, t], out=hs[:, t + 1])
                    torch.where(keep[:, t], cs[:, t + 1], cs[:, t], out=cs[:, t + 1])
        ctx.save_for_backward(hs, cs, tcs, acts, keep, x, x_weight, *factors)
        steps, batch = acts.size(1), acts.size(2)
        # Views of the saved buffers: autograd refuses in-place changes to a custom Function's
        # view outputs, so they cannot corrupt what the backward reads.
        out = hs[:, 1:].permute(1, 2, 0, 3).reshape(steps, batch, groups * s)  # (T, N, G*s)
        return out, hs[:, steps], cs[:, steps]

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None):
        hs, cs, tcs, acts, keep, x, x_weight, *factors = ctx.saved_tensors
        groups, steps, batch, four_s = acts.shape
        s = hs.size(-1)
        need_dh0 = bool(ctx.needs_input_grad[1])
        need_dbias = ctx.has_bias and ctx.needs_input_grad[4]
        if ctx.compiled:
            # the kernel sums the bias gradient while each step's gradients are in cache (also below)
            dgates, dh, dc, d_bias = kernels().linear_backward(d_out, d_hn, d_cn, hs, cs, tcs, acts, keep, factors[0],
                                                               need_dh0, need_dbias)
        else:
            dgates, dh, dc = _linear_backward_loop(d_out, d_hn, d_cn, hs, cs, tcs, acts, keep, factors, need_dh0)
            d_bias = dgates.sum((1, 2)) if need_dbias else None
        d_xw, d_x_weight = dgates, None
        if x is not None:
            d_pre = dgates.view(groups, steps * batch, four_s)
            d_xw = None
            if ctx.needs_input_grad[0]:  # (G, T*N, m_g) back to (T, N, G*m_g)
                d_xw = torch.bmm(d_pre, x_weight.transpose(1, 2)).transpose(0, 1).reshape(x.shape)
            if ctx.needs_input_grad[5]:
                d_x_weight = torch.bmm(group_major(x, groups).transpose(1, 2), d_pre)
        d_factors: list[Tensor | None] = [None] * len(factors)
        if any(ctx.needs_input_grad[6:]):
            # Whole-window matmuls: H (G, T*N, s) and dG (G, T*N, 4s) are views, no copies.
            h_prev = hs[:, :-1].reshape(groups, steps * batch, s)
            d_pre = dgates.view(groups, steps * batch, four_s)
            # Activations entering each factor, forward: u_0 = H, u_l = u_{l-1} F_l.
            inputs = [h_prev]
            for fct in factors[:-1]:
                inputs.append(torch.bmm(inputs[-1], fct))
            grad = d_pre
            for idx in range(len(factors) - 1, -1, -1):
                d_factors[idx] = torch.bmm(inputs[idx].transpose(1, 2), grad)
                if idx > 0:
                    grad = torch.bmm(grad, factors[idx].transpose(1, 2))
        return (d_xw, dh, dc, None, d_bias, d_x_weight, *d_factors)


def _bottleneck_backward_loop(d_out, d_hn, d_cn, hs, cs, tcs, acts, zs, a_in, b_out, need_dh0: bool):
    """The backward time loop of ``_BottleneckRecurrence`` in Python (the compiled op's specification):
    returns the gradients of the pre-activations (T, N, 4n), of the bottleneck (T, N, r), of h0 and c0."""
    steps = acts.size(0)
    n = hs.size(-1)
    dh = torch.zeros_like(hs[0]) if d_hn is None else d_hn.clone()
    dc = torch.zeros_like(cs[0]) if d_cn is None else d_cn.clone()
    dgates = torch.empty_like(acts)
    dzs = torch.empty_like(zs)  # gradient of each step's bottleneck == gradient of xz
    b_t, a_t = b_out.t(), a_in.t()
    p, q, r = _backward_tables(acts, cs[:-1], tcs)
    forget = acts[..., n:2 * n]
    for t in range(steps - 1, -1, -1):
        if d_out is not None:
            dh.add_(d_out[t])
        dg = dgates[t]
        _cell_backward(dh, dc, p[t], q[t], r[t], forget[t], dg)
        dz = torch.mm(dg, b_t, out=dzs[t])
        if t > 0 or need_dh0:
            dh = torch.mm(dz, a_t)
    return dgates, dzs, dh, dc


class _BottleneckRecurrence(torch.autograd.Function):
    """F-LSTM: ``z_t = xz_t + h_{t-1} A``, ``pre_t = z_t B + b``; xz (T, N, r), A (n, r), B (r, 4n)."""

    @staticmethod
    def forward(ctx, xz: Tensor, h0: Tensor, c0: Tensor, a_in: Tensor, b_out: Tensor, bias: Tensor | None):
        steps, batch, rank = xz.shape
        n = h0.size(-1)
        ops = compiled_kernels(xz, a_in, b_out)
        ctx.compiled = ops is not None
        if ops is not None:
            hs, cs, tcs, acts, zs = ops.bottleneck_forward(xz, h0.contiguous(), c0.contiguous(), a_in.contiguous(),
                                                           b_out.contiguous(), bias)
        else:
            hs = xz.new_empty(steps + 1, batch, n)
            cs = torch.empty_like(hs)
            tcs = xz.new_empty(steps, batch, n)
            zs = torch.empty_like(xz)  # the bottleneck of every step, for B's gradient
            acts = xz.new_empty(steps, batch, 4 * n)
            hs[0] = h0
            cs[0] = c0
            for t in range(steps):
                z = torch.addmm(xz[t], hs[t], a_in, out=zs[t])
                pre = torch.addmm(bias, z, b_out) if bias is not None else torch.mm(z, b_out)
                _cell_forward(pre, cs[t], acts[t], cs[t + 1], tcs[t], hs[t + 1])
        ctx.save_for_backward(hs, cs, tcs, acts, zs, a_in, b_out)
        ctx.has_bias = bias is not None
        return hs[1:], hs[steps], cs[steps]

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None):
        hs, cs, tcs, acts, zs, a_in, b_out = ctx.saved_tensors
        steps, batch, four_n = acts.shape
        rank = zs.size(-1)
        need_dh0 = bool(ctx.needs_input_grad[1])
        need_dbias = ctx.has_bias and ctx.needs_input_grad[5]
        if ctx.compiled:
            dgates, dzs, dh, dc, d_bias = kernels().bottleneck_backward(d_out, d_hn, d_cn, hs, cs, tcs, acts,
                                                                        a_in.contiguous(), b_out.contiguous(),
                                                                        need_dh0, need_dbias)
        else:
            dgates, dzs, dh, dc = _bottleneck_backward_loop(d_out, d_hn, d_cn, hs, cs, tcs, acts, zs, a_in, b_out,
                                                            need_dh0)
            d_bias = dgates.view(steps * batch, four_n).sum(0) if need_dbias else None
        d_pre = dgates.view(steps * batch, four_n)
        d_z = dzs.view(steps * batch, rank)
        d_a = torch.mm(hs[:-1].reshape(steps * batch, -1).t(), d_z) if ctx.needs_input_grad[3] else None
        d_b = torch.mm(zs.view(steps * batch, rank).t(), d_pre) if ctx.needs_input_grad[4] else None
        return dzs, dh, dc, d_a, d_b, d_bias


def bottleneck_recurrence(xz: Tensor, h0: Tensor, c0: Tensor, a_in: Tensor, b_out: Tensor, bias: Tensor | None):
    """Run the F-LSTM recurrence over a window; differentiable in every argument.

    ``xz`` (T, N, r) is the x side of the bottleneck for the window, ``a_in`` (n, r) maps h into
    it, ``b_out`` (r, 4n) and ``bias`` (4n,) map it to the gates. Returns ``(out (T, N, n), h_T, c_T)``.
    """
    if xz.size(0) == 0:
        return xz.new_empty(0, xz.size(1), h0.size(-1)), h0, c0
    return _BottleneckRecurrence.apply(xz.contiguous(), h0, c0, a_in, b_out, bias)


def group_major(x: Tensor, groups: int) -> Tensor:
    """(T, N, G*m_g) as the strided view (G, T*N, m_g)."""
    return x.reshape(x.size(0) * x.size(1), groups, -1).transpose(0, 1)


def group_projection(x: Tensor, x_weight: Tensor) -> Tensor:
    """Each group's x side for the whole window in one bmm: x (T, N, G*m_g), ``x_weight`` (G, m_g, 4s)
    -> (G, T, N, 4s), the ``xw`` that ``linear_recurrence`` takes."""
    groups = x_weight.size(0)
    return torch.bmm(group_major(x, groups), x_weight).view(groups, x.size(0), x.size(1), -1)


def linear_recurrence(xw: Tensor, h0: Tensor, c0: Tensor, factors: tuple[Tensor, ...] | list[Tensor],
                      keep: Tensor | None = None, bias: Tensor | None = None, x_weight: Tensor | None = None):
    """Run the LSTM recurrence ``pre_t = xw_t + h_{t-1} F_1 ... F_L`` over a window; differentiable.

    ``xw`` (G, T, N, 4s) group-major; ``h0``, ``c0`` (G, N, s); ``factors`` (G, a, b) chaining s -> 4s.
    ``keep`` (G, T, N, 1) bool, optional: where False, that group of that sequence keeps its state at
    that step instead of updating (hard routing). ``bias`` (G, 4s), optional: added to every step's
    pre-activations (cheaper here than broadcast into the input projection). ``x_weight`` (G, m_g, 4s),
    optional (no ``keep`` then): ``xw`` is instead the layer input x (T, N, G*m_g) and group j's x side
    ``x[..., j m_g:(j+1) m_g] @ x_weight[j]`` is computed a step at a time inside the loop; gradients reach
    x and ``x_weight``. Returns ``(out, h_T, c_T)``: every step's hidden
    state laid out as (T, N, G*s) (group j's units in columns [j s, (j+1) s)) and the final state (G, N, s).
    """
    groups = h0.size(0)
    steps, batch = (xw.size(0), xw.size(1)) if x_weight is not None else (xw.size(1), xw.size(2))
    if steps == 0:
        return xw.new_empty(0, batch, groups * h0.size(-1)), h0, c0
    if x_weight is not None and keep is not None:
        raise ValueError("linear_recurrence: x_weight takes no keep mask")
    return _LinearRecurrence.apply(xw.contiguous(), h0, c0, keep, bias, x_weight, *factors)


def strided_lstms(x: Tensor, state: State, weights: list[list[Tensor]], offset: int = 0) -> tuple[Tensor, State]:
    """k LSTM sub-cells taking turns, sub-cell j updating at the steps t with (offset + t) mod k == j.

    Sub-cell j only ever sees the steps j - offset, j - offset + k, ... of ``x`` (T, N, m), so it is
    an ordinary LSTM on that strided sub-sequence: one fused-kernel call each (``weights[j]`` as for
    ``fused_lstm``), and at any step its state is its last output (or its initial state). ``state``
    is ``(h, c)`` each (N, k*s), sub-cell j in columns [j s, (j+1) s). Returns ``(out (T, N, k*s), (h, c))``.
    """
    h, c = state
    steps, batch = x.size(0), x.size(1)
    k = len(weights)
    s = h.size(-1) // k
    hk, ck = h.view(batch, k, s), c.view(batch, k, s)
    outs, h_n, c_n = [], [], []
    for j in range(k):
        first = (j - offset) % k
        h0, c0 = hk[:, j], ck[:, j]
        if first < steps:
            out_j, (hj, cj) = fused_lstm(x[first::k], (h0, c0), weights[j])
            seq = torch.cat([h0.unsqueeze(0), out_j])  # (1 + T_j, N, s): state after u updates
        else:
            seq, hj, cj = h0.unsqueeze(0), h0, c0
        # Number of updates sub-cell j has made by the end of step t.
        updates = [(t - first) // k + 1 if t >= first else 0 for t in range(steps)]
        outs.append(seq.index_select(0, torch.tensor(updates, device=x.device)))
        h_n.append(hj)
        c_n.append(cj)
    return torch.cat(outs, -1), (torch.cat(h_n, -1), torch.cat(c_n, -1))
