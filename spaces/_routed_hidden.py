"""Hidden-state routing (``RoutedLayer``, ``routing="hidden"``) as one compiled loop on CPU.

The router reads ``h_{t-1}``, so the choice of step t is known only once step t-1 is done: the
choice, the Gumbel-softmax and the mixing run inside the compiled time loop (``hidden_forward`` /
``hidden_backward`` in ``_kernels.cpp``), one autograd node for the window. Its specification is the
layer's Python loops (``RoutedLayer._forward_mixed`` in training, ``_forward_selected`` in eval) and
``forward_reference``; the same Gumbel noise is drawn, in the same order, before the loop.

What it saves besides the per-step dispatch of ~20 small ops: every sub-cell's candidate update is
computed in the forward (training needs all of them: the straight-through gradient of the mixing weight
``y_j`` is ``<dh, h'_j - h_j> + <dc, c'_j - c_j>``), but ``y_j`` is exactly 0 for every sub-cell not
chosen, so their candidates get no gradient. The backward runs the cell backward and the recurrent matmul
for the chosen sub-cell only, returns its gate gradients compacted (one 4s row a token, sorted by
sub-cell), and the input and weight gradients are one matmul per sub-cell over exactly its tokens: 1/k
of the dense backward's multiply-adds on the input side.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._kernels import kernels


class _HiddenRouted(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, bias: Tensor | None, weight_hh: Tensor,
                router_w: Tensor, router_b: Tensor | None, noise: Tensor | None, tau: float):
        steps, batch, m = x.shape
        xw = torch.mm(x.reshape(steps * batch, m), weight_ih.t()).view(steps, batch, -1)
        hs, cs, acts, tcs, cands, soft, choice = kernels().hidden_forward(
            xw, h0.contiguous(), c0.contiguous(), bias, weight_hh.transpose(1, 2), router_w, router_b, noise, tau)
        ctx.save_for_backward(x, hs, cs, acts, tcs, cands, soft, choice, weight_ih, weight_hh, router_w)
        ctx.tau, ctx.mix, ctx.has_bias, ctx.has_router_bias = tau, noise is not None, bias is not None, router_b is not None
        return hs[1:], hs[steps], cs[steps]

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: Tensor | None, d_hn: Tensor | None, d_cn: Tensor | None):
        x, hs, cs, acts, tcs, cands, soft, choice, weight_ih, weight_hh, router_w = ctx.saved_tensors
        steps, batch, m = x.shape
        k, four_s, s = weight_hh.shape
        tokens = steps * batch
        flat = choice.view(tokens)
        order = torch.argsort(flat, stable=True)  # tokens grouped by sub-cell, in token order within one
        dest = torch.empty_like(order).scatter_(0, order, torch.arange(tokens))
        need = ctx.needs_input_grad
        dg, dlogits, dh0, dc0 = kernels().hidden_backward(
            d_out, d_hn, d_cn, hs, cs, acts, tcs, cands, soft if ctx.mix else None, choice, dest,
            weight_hh.transpose(1, 2), router_w, ctx.tau, bool(need[1]))
        counts = torch.bincount(flat, minlength=k).tolist()
        w_ih = weight_ih.view(k, four_s, m)
        dx_sorted = x.new_empty(tokens, m) if need[0] else None
        d_w_ih = torch.zeros_like(w_ih) if need[3] else None
        d_bias = x.new_zeros(k, four_s) if ctx.has_bias and need[4] else None
        d_w_hh = torch.zeros_like(weight_hh) if need[5] else None
        x_sorted = x.reshape(tokens, m).index_select(0, order) if need[3] else None
        # each token's chosen sub-cell's slice of h_{t-1}, in the sorted order
        h_sorted = hs[:-1].reshape(tokens * k, s).index_select(0, order * k + flat[order]) if need[5] else None
        start = 0
        for j, rows in enumerate(counts):
            if rows:
                seg, g = slice(start, start + rows), dg[start:start + rows]
                if dx_sorted is not None:
                    torch.mm(g, w_ih[j], out=dx_sorted[seg])
                if d_w_ih is not None:
                    torch.mm(g.t(), x_sorted[seg], out=d_w_ih[j])
                if d_w_hh is not None:
                    torch.mm(g.t(), h_sorted[seg], out=d_w_hh[j])
                if d_bias is not None:
                    torch.sum(g, 0, out=d_bias[j])
            start += rows
        dx = dx_sorted.index_select(0, dest).view(steps, batch, m) if dx_sorted is not None else None
        d_router_w = d_router_b = None
        if ctx.mix and need[6]:
            d_router_w = torch.mm(dlogits.view(tokens, k).t(), hs[:-1].reshape(tokens, -1))
        if ctx.mix and ctx.has_router_bias and need[7]:
            d_router_b = dlogits.sum((0, 1))
        return (dx, dh0 if need[1] else None, dc0 if need[2] else None,
                d_w_ih.view_as(weight_ih) if d_w_ih is not None else None,
                d_bias.view(-1) if d_bias is not None else None, d_w_hh, d_router_w, d_router_b, None, None)


def hidden_routed_forward(layer, x: Tensor, h: Tensor, c: Tensor):
    """``RoutedLayer.forward`` for ``hidden`` routing with k > 1, through the compiled loop (CPU; the
    caller checked ``compiled_kernels``). Returns ``(output (T, N, n), (h_T, c_T))``."""
    steps, batch = x.shape[0], x.shape[1]
    if steps == 0:
        return x.new_empty(0, batch, layer.hidden_size), (h, c)
    noise = None
    if layer.training:  # the Gumbel noise of every step, drawn as the Python loop draws it: one (N, k) a step
        noise = -torch.empty(steps, batch, layer.num_cells, dtype=x.dtype).exponential_(generator=layer.generator).log()
    bias = None if layer.bias_ih is None else layer.bias_ih + layer.bias_hh
    out, h_n, c_n = _HiddenRouted.apply(x.contiguous(), h, c, layer.weight_ih, bias, layer.weight_hh,
                                        layer.router_weight, layer.router_bias, noise, float(layer.gumbel_tau))
    return out, (h_n, c_n)
