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
- ``packed_routing`` (routed ``token``): the choices are known before the window, so each sub-cell
  sees a packed batch of variable-length sequences (the steps routed to it, compacted per sequence,
  sequences sorted by length): one packed cuDNN call per sub-cell, computing only its own input
  projections. (``round_robin`` on this path is ``_recurrence.strided_lstms``: k calls on strided slices.)
"""

from __future__ import annotations

import numpy as np
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


def packed_routing(x: Tensor, state: State, choice: Tensor, cell_weights: list[list[Tensor]]) -> tuple[Tensor, State]:
    """Hard routing with choices known up front (``choice`` (T*N,) the sub-cell of token t*N + b), as one
    packed fused-LSTM call per sub-cell; ``cell_weights[j]`` is sub-cell j's ``fused_lstm`` weights.

    Sub-cell j of sequence b sees only the steps routed to it; those compacted sequences, sorted by length
    (longest first), are a packed batch (``batch_sizes``), so one call runs all of sub-cell j's updates,
    each sequence's final state being its state after its last one. Every output row (t, b, j) is then
    gathered from the table [initial states; the packed outputs]. ``state`` is (h, c) each (N, k*s).
    """
    h, c = state
    T, N, m = x.shape
    k = len(cell_weights)
    s = h.size(-1) // k
    dev = x.device
    if T == 0:
        return x.new_empty(0, N, k * s), (h, c)
    updates = F.one_hot(choice, k).view(T, N, k).cumsum(0)  # (T, N, k): updates of sub-cell j of b by step t
    counts = updates[-1]  # (N, k)
    counts_host = counts.cpu().numpy()  # the packed batch sizes live on the host, as cuDNN wants them
    L = int(counts_host.max())
    by_count = torch.argsort(counts.t(), dim=1, descending=True, stable=True)  # (k, N): rank -> sequence
    rank = torch.argsort(by_count, dim=1)  # (k, N): sequence -> rank
    u = updates.view(T * N, k).gather(1, choice.unsqueeze(1)).squeeze(1) - 1  # the token's update index
    tokens = torch.arange(T * N, device=dev)
    # (sub-cell, update, rank): in this order, the used slots ARE the packed layout of all k sub-cells.
    slot = (choice * L + u) * N + rank.reshape(-1)[choice * N + tokens % N]
    keep = torch.zeros(k * L * N, dtype=torch.int32, device=dev).index_fill_(0, slot, 1)
    packed_row = keep.cumsum(0) - 1  # slot -> row of the packed data (where the slot is used)
    order = torch.argsort(slot)  # packed row -> token
    data = x.reshape(T * N, m).index_select(0, order)
    to_rank = by_count.unsqueeze(-1).expand(k, N, s)
    hk = h.view(N, k, s).transpose(0, 1).gather(1, to_rank)  # (k, N, s), sequences in rank order
    ck = c.view(N, k, s).transpose(0, 1).gather(1, to_rank)
    # batch size of sub-cell j at update u: how many sequences made more than u updates of it
    sizes = (counts_host[None] > np.arange(L)[:, None, None]).sum(1)  # (L, k)
    train = torch.is_grad_enabled()
    has_bias = len(cell_weights[0]) == 4
    table, h_n, c_n, start = [hk.reshape(k * N, s)], [], [], 0
    for j in range(k):
        batch_sizes = sizes[:, j][sizes[:, j] > 0]
        rows = int(batch_sizes.sum())
        if rows == 0:
            h_n.append(hk[j])
            c_n.append(ck[j])
            continue
        first = int(batch_sizes[0])
        hx = (hk[j, :first].unsqueeze(0).contiguous(), ck[j, :first].unsqueeze(0).contiguous())
        weights = [w.contiguous() for w in cell_weights[j]]
        out, hj, cj = torch._VF.lstm(data[start:start + rows], torch.from_numpy(np.ascontiguousarray(batch_sizes)),
                                     hx, weights, has_bias, 1, 0.0, train, False)
        table.append(out)
        h_n.append(torch.cat([hj[0], hk[j, first:]]) if first < N else hj[0])
        c_n.append(torch.cat([cj[0], ck[j, first:]]) if first < N else cj[0])
        start += rows
    # output row (t, b, j): the initial state if sub-cell j of b has not updated yet, else its packed output
    cells = torch.arange(k, device=dev)
    r = rank.t()  # (N, k)
    used = (cells * L + (updates - 1).clamp(min=0)) * N + r  # (T, N, k)
    src = torch.where(updates > 0, k * N + packed_row[used], cells * N + r)
    output = torch.cat(table).index_select(0, src.flatten()).view(T, N, k * s)
    to_seq = rank.unsqueeze(-1).expand(k, N, s)
    h_n, c_n = torch.stack(h_n).gather(1, to_seq), torch.stack(c_n).gather(1, to_seq)  # back to sequence order
    return output, (h_n.transpose(0, 1).reshape(N, k * s), c_n.transpose(0, 1).reshape(N, k * s))
