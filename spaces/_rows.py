"""Row moves with exact, cheap backwards for the routed cells' compacted paths (``routed.py``).

``PermuteRows`` places rows by an injective index (backward: a gather, not an accumulating scatter);
``SegmentLinear`` multiplies consecutive row segments by their own weight (tokens sorted by sub-cell).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class PermuteRows(torch.autograd.Function):
    """``out`` (size, d) with ``out[dest[i]] = src[i]``, and zeros in the rows no source reaches
    (``mask`` (size,) marks the rows ``dest`` reaches; None: all of them).

    ``dest`` is injective, so the backward is a gather (``grad[dest]``), not the accumulating scatter
    that autograd records for advanced indexing.
    """

    @staticmethod
    def forward(ctx, src: Tensor, dest: Tensor, size: int, mask: Tensor | None):
        index = torch.zeros(size, dtype=torch.long, device=src.device)
        index[dest] = torch.arange(src.size(0), device=src.device)
        out = src.index_select(0, index)
        if mask is not None:
            out.mul_(mask.unsqueeze(1).to(out.dtype))
        ctx.save_for_backward(dest)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (dest,) = ctx.saved_tensors
        return grad.index_select(0, dest), None, None, None


class SegmentLinear(torch.autograd.Function):
    """``x`` (R, m) in k consecutive segments of ``counts`` rows; segment j times ``weight[j]^T``
    (``weight`` (k, d, m)) -> (R, d). One matmul per segment, each exactly its rows: the input
    projections of tokens sorted by sub-cell, however unevenly a batch spreads over the sub-cells."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, counts: list[int]):
        out = x.new_empty(x.size(0), weight.size(1))
        start = 0
        for j, rows in enumerate(counts):
            if rows:
                torch.mm(x[start:start + rows], weight[j].t(), out=out[start:start + rows])
            start += rows
        ctx.save_for_backward(x, weight)
        ctx.counts = counts
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dw = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        start = 0
        for j, rows in enumerate(ctx.counts):
            if rows:
                g = grad[start:start + rows]
                if dx is not None:
                    torch.mm(g, weight[j], out=dx[start:start + rows])
                if dw is not None:
                    torch.mm(g.t(), x[start:start + rows], out=dw[j])
            start += rows
        return dx, dw, None
