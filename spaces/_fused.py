"""The CUDA path's exact fused formulations: families whose step is an LSTM with a linear recurrent map,
run through torch's fused LSTM kernel (cuDNN on a GPU) a bounded number of times per window.

Taken where ``_kernels.gpu_path(...)`` is true (CUDA tensors, or ``SQUEEZELSTM_KERNELS=gpu`` on CPU
tensors, which is how the tests and ``benchmarks/launches.py`` check this path without a GPU). Each
function computes exactly its family's function (the reference path's, to float rounding), and its
launches per window do not grow with the window's length (except where said):

- ``grouped_fused`` (G-LSTM): below ``BLOCK_DIAGONAL_MAX_HIDDEN`` the g groups are ONE LSTM whose
  weights are block-diagonal (formed once per window; the zero blocks get no gradient): one cuDNN call
  for any g, at g times the G-LSTM's multiply-adds, which small cells do not notice (cuDNN is latency-
  bound there). From that width on, where multiply-adds dominate, each group is its own cuDNN LSTM of
  width n/g on its input slice: g calls per layer and exactly the G-LSTM's 4n(m+n)/g multiply-adds a token.
- ``factorized_fused`` (F-LSTM): the product W2 W1 (4n, m+n) formed once per window, then one cuDNN
  call. That executes the dense LSTM's 4n(m+n) multiply-adds a token instead of r(m+n) + 4nr, so it is
  used below ``PRODUCT_MAX_HIDDEN`` only; wider F-LSTMs keep the bottleneck recurrence
  (``_recurrence.bottleneck_recurrence``, the saved multiply-adds kept, launches a few per step).
- ``compacted_routing`` (routed ``token`` and ``round_robin``): the choices are known before the window,
  so each sub-cell is an LSTM over the steps routed to it, compacted and padded with exact no-op steps;
  one block-diagonal fused call for all k sub-cells (or, from ``BLOCK_DIAGONAL_MAX_HIDDEN``, one per
  sub-cell, each computing only its own multiply-adds).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ._base import State
from .lstm import fused_lstm

# Hidden width from which G-LSTM groups run as separate cuDNN calls (exact multiply-adds) rather than
# one block-diagonal call (g times the multiply-adds, one launch); the "FLOPs dominate" width.
BLOCK_DIAGONAL_MAX_HIDDEN = 1024
# Hidden width from which F-LSTM keeps its bottleneck recurrence instead of the dense product W2 W1.
PRODUCT_MAX_HIDDEN = 1024


def _two_biases(bias: Tensor | None) -> list[Tensor]:
    """The fused kernel takes b_ih and b_hh; these families have one bias (the second is zeros)."""
    return [] if bias is None else [bias, torch.zeros_like(bias)]


def block_diagonal(weight: Tensor) -> Tensor:
    """G-LSTM weights (g, 4n/g, w/g), group j's rows in gate order i, f, g, o, as one LSTM weight
    (4n, w) in torch's layout (gate-major, then unit), zero outside the groups' blocks."""
    g, four_ng, wg = weight.shape
    ng = four_ng // 4
    blocks = torch.diag_embed(weight.view(g, 4, ng, wg).permute(1, 2, 3, 0))  # (4, ng, wg, g, g)
    return blocks.permute(0, 3, 1, 4, 2).reshape(4 * g * ng, g * wg)  # (4, g, ng, g, wg)


def grouped_fused(x: Tensor, state: State, weight_ih: Tensor, weight_hh: Tensor, bias: Tensor | None,
                  group_bias: Tensor | None) -> tuple[Tensor, State]:
    """One G-LSTM layer through the fused kernel: ``weight_ih`` (g, 4n/g, m/g), ``weight_hh`` (g, 4n/g, n/g),
    ``bias`` (4n,) in the LSTM's order and ``group_bias`` the same rearranged group-major (g, 4n/g)."""
    g = weight_ih.size(0)
    n = state[0].size(-1)
    if n < BLOCK_DIAGONAL_MAX_HIDDEN:
        return fused_lstm(x, state, [block_diagonal(weight_ih), block_diagonal(weight_hh), *_two_biases(bias)])
    h, c = state
    mg, ng = x.size(-1) // g, n // g
    outs, hs, cs = [], [], []
    for j in range(g):
        weights = [weight_ih[j], weight_hh[j], *_two_biases(None if group_bias is None else group_bias[j])]
        out, (hj, cj) = fused_lstm(x[..., j * mg:(j + 1) * mg], (h[:, j * ng:(j + 1) * ng], c[:, j * ng:(j + 1) * ng]),
                                   weights)
        outs.append(out)
        hs.append(hj)
        cs.append(cj)
    return torch.cat(outs, -1), (torch.cat(hs, -1), torch.cat(cs, -1))


def factorized_fused(x: Tensor, state: State, weight_in: Tensor, weight_out: Tensor,
                     bias: Tensor | None) -> tuple[Tensor, State]:
    """One F-LSTM layer as the LSTM with gate matrix W2 W1 (4n, m + n), formed once for the window."""
    m = x.size(-1)
    weight = weight_out @ weight_in
    return fused_lstm(x, state, [weight[:, :m], weight[:, m:], *_two_biases(bias)])


# Added to the pre-activations of a padding step: sigmoid(-PAD) == 0 and sigmoid(PAD) == 1 exactly in
# float32, bf16 and fp16, so the input gate shuts, the forget gate passes c through unchanged, and no gradient
# reaches the step's weights, input or previous state.
PAD = 1.0e4
_CONSTANTS: dict = {}  # (what, shapes..., device[, dtype]) -> tensor, built once per process


def _pad_column(s: int, dtype, device) -> Tensor:
    """The padding flag's weight column of one sub-cell (4s, 1): -PAD on the input gate's rows, PAD on the forget gate's."""
    key = ("pad", s, dtype, str(device))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor([-PAD, PAD, 0.0, 0.0], dtype=dtype).repeat_interleave(s).view(4 * s, 1).to(device)
    return _CONSTANTS[key]


def _block_index(k: int, s: int, m: int, bias: bool, device) -> Tensor:
    """Where each entry of the block-diagonal weights of ``_block_weights`` comes from in their flat source."""
    key = ("block", k, s, m, bias, str(device))
    if key in _CONSTANTS:
        return _CONSTANTS[key]
    n, w = k * s, m + 1
    q, j, v = (t.reshape(-1) for t in torch.meshgrid(torch.arange(4), torch.arange(k), torch.arange(s), indexing="ij"))
    own = (j * 4 + q) * s + v  # (4n,) each LSTM row's row in the sub-cells' (k, 4s) layout, gate-major order
    ih, hh = k * 4 * s * m, k * 4 * s * s  # sizes of the flat sources
    tail = ih + hh + (8 * n if bias else 0)  # [0, -PAD, PAD] come last
    zero = tail
    col = torch.arange(k * w)
    same = (col // w).unsqueeze(0) == j.unsqueeze(1)  # (4n, k w): the row's own block
    x_part = torch.where((col % w < m).unsqueeze(0), own.unsqueeze(1) * m + (col % w).unsqueeze(0),
                         (tail + torch.where(q == 0, 1, torch.where(q == 1, 2, 0))).unsqueeze(1))
    parts = [torch.where(same, x_part, zero).flatten()]
    col = torch.arange(n)
    same = (col // s).unsqueeze(0) == j.unsqueeze(1)
    parts.append(torch.where(same, ih + own.unsqueeze(1) * s + (col % s).unsqueeze(0), zero).flatten())
    if bias:
        parts += [ih + hh + own, ih + hh + 4 * n + own]
    _CONSTANTS[key] = index = torch.cat(parts).to(device, torch.int32)  # int32: half the memory of int64
    return index


def _block_weights(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None) -> list[Tensor]:
    """The k sub-cells as ONE LSTM of width n = k s on inputs [x_1, flag_1, ..., x_k, flag_k] (widths m + 1):
    block-diagonal W_ih (4n, k(m+1)) with the padding flag's column, block-diagonal W_hh (4n, n) and the
    biases, rows in gate-major order; all gathered from the parameters by one index (a single op and its
    backward, where slicing and reordering them would be a dozen)."""
    k, four_s, m = weight_ih.shape
    s, n = four_s // 4, k * four_s // 4
    key = ("tail", weight_ih.dtype, str(weight_ih.device))
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor([0.0, -PAD, PAD], dtype=weight_ih.dtype).to(weight_ih.device)
    flat = [t.reshape(-1) for t in (weight_ih, weight_hh, bias_ih, bias_hh) if t is not None]
    full = torch.cat(flat + [_CONSTANTS[key]]).index_select(0, _block_index(k, s, m, bias_ih is not None, weight_ih.device))
    sizes = [4 * n * k * (m + 1), 4 * n * n] + ([] if bias_ih is None else [4 * n, 4 * n])
    w_ih, w_hh, *biases = full.split(sizes)
    return [w_ih.view(4 * n, k * (m + 1)), w_hh.view(4 * n, n), *biases]


class _Compact(torch.autograd.Function):
    """The window's tokens x (T*N, m) in their compacted rows ``slot`` of a (rows, m + 1) buffer, whose
    last column is the padding flag (1 where no token lands); backward: one gather."""

    @staticmethod
    def forward(ctx, x: Tensor, slot: Tensor, rows: int):
        m = x.size(1)
        out = x.new_zeros(rows, m + 1)
        out.select(1, m).fill_(1.0)
        out.index_copy_(0, slot, F.pad(x, (0, 1)))
        ctx.save_for_backward(slot)
        ctx.m = m
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (slot,) = ctx.saved_tensors
        return grad.index_select(0, slot)[:, :ctx.m], None, None


def compacted_routing(x: Tensor, state: State, choice: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                      bias_ih: Tensor | None, bias_hh: Tensor | None) -> tuple[Tensor, State]:
    """Hard routing with choices known up front (``choice`` (T*N,) the sub-cell of token t*N + b), through
    the fused LSTM kernel over the compacted window; exact.

    Sub-cell j of sequence b sees only the steps routed to it, so it is an LSTM over those steps: they
    are compacted (update u of sub-cell j of b goes to step u), padded to the longest run L (about T/k).
    A padding step must leave the sub-cell's state as it is: the input gets one more column, 1 at padding
    steps and 0 at real ones, whose weight is -PAD on the input gate's rows and +PAD on the forget gate's,
    which makes c_t = c_{t-1} exactly and blocks every gradient through the step (its h is never read:
    outputs are gathered from the real steps). Below ``BLOCK_DIAGONAL_MAX_HIDDEN`` the k sub-cells are one
    LSTM with block-diagonal weights, ONE fused call over L steps; from there on one call per sub-cell
    keeps the multiply-adds at 4s(m + s) a token.

    ``weight_ih`` (k, 4s, m), ``weight_hh`` (k, 4s, s), biases (k, 4s), sub-cell rows in gate order
    i, f, g, o; ``state`` (h, c) each (N, k*s), sub-cell j in columns [j s, (j+1) s).
    """
    h, c = state
    T, N, m = x.shape
    k, four_s, _ = weight_ih.shape
    s = four_s // 4
    n = k * s
    if T == 0:
        return x.new_empty(0, N, n), (h, c)
    onehot = F.one_hot(choice, k).view(T, N, k)
    updates = onehot.cumsum(0)  # (T, N, k): updates of sub-cell j of b by step t
    L = int(updates[-1].max())
    # Rows ((u, b), j) of [h; the compacted steps' outputs] hold sub-cell j of b after u updates: output
    # (t, b, j) is row src[t, b, j], and the token (t, b) itself goes to compacted step u - 1, its slot.
    src = updates * (N * k) + torch.arange(N * k, device=x.device).view(N, k)
    slot = (src - N * k).masked_select(onehot.bool())
    data = _Compact.apply(x.reshape(T * N, m), slot, L * N * k).view(L, N, k, m + 1)
    if n < BLOCK_DIAGONAL_MAX_HIDDEN:
        out, (_, c_n) = fused_lstm(data.view(L, N, k * (m + 1)), state,
                                   _block_weights(weight_ih, weight_hh, bias_ih, bias_hh))
    else:
        pad = _pad_column(s, weight_ih.dtype, weight_ih.device)
        outs, cs = [], []
        for j in range(k):
            weights = [torch.cat([weight_ih[j], pad], 1), weight_hh[j]]
            weights += [] if bias_ih is None else [bias_ih[j], bias_hh[j]]
            cols = slice(j * s, (j + 1) * s)
            out_j, (_, c_j) = fused_lstm(data[:, :, j], (h[:, cols], c[:, cols]), weights)
            outs.append(out_j)
            cs.append(c_j)
        out, c_n = torch.cat(outs, -1), torch.cat(cs, -1)
    seq = torch.cat([h.unsqueeze(0), out]).view((L + 1) * N * k, s)
    output = seq.index_select(0, src.flatten()).view(T, N, n)
    return output, (output[-1], c_n)
