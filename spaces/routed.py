"""RoutedLSTM (family ``routed``): SqueezeLSTM, ``k`` small LSTM sub-cells with one chosen per step.

A layer of width ``n`` holds ``k = num_cells`` sub-cells of width ``s = n / k``. Sub-cell ``j`` owns the
slice ``j`` of the layer state, ``(h_j, c_j)``, and is a small LSTM reading the layer input and its own
``h_j`` (gate order i, f, g, o as in ``torch.nn.LSTM``):

    [i; f; g; o]_j = W_ih_j x_t + b_ih_j + W_hh_j h_j + b_hh_j      W_ih_j: (4s, m), W_hh_j: (4s, s)
    c_j' = sigmoid(f) * c_j + sigmoid(i) * tanh(g),   h_j' = sigmoid(o) * tanh(c_j')

At each step every sequence is routed to ONE sub-cell ``r_t``: ``(h_r, c_r) <- (h_r', c_r')`` and the
other sub-cells keep their state. The step's output is the whole state ``h_t = [h_1; ...; h_k]``.
``routing`` picks ``r_t``:

- ``hidden``: a learned router ``Linear(n, k)`` on ``h_{t-1}``. Eval: ``argmax``. Training: a
  straight-through Gumbel-softmax (temperature ``gumbel_tau``): the forward is hard (one sub-cell),
  the backward uses ``y = onehot - softmax.detach() + softmax`` in ``h_j <- y_j h_j' + (1 - y_j) h_j``,
  which needs every candidate update ``h_j'``; so in training all ``k`` sub-cells are computed
  (recurrent cost ``4 n s`` multiply-adds a token, like a grouped LSTM with ``k`` groups) and mixed.
  The Gumbel noise is drawn from the ``generator`` passed to ``forward`` or, if none, from torch's
  default generator (which the trainer seeds and checkpoints).
- ``round_robin``: ``r_t = (offset + t) mod k``, ``t`` counting from the window start; pass the window's
  position in the stream as ``forward(..., offset=...)`` so split windows equal whole ones.
- ``token``: a fixed hash of ``x_t``: the sign pattern of a fixed seeded random projection
  (a 16-column buffer, not a parameter) read as a binary number, ``mod k``. Same input, same sub-cell.
- ``soft``: every sub-cell updates and ``w = softmax(Linear(n, k)(h_{t-1}))`` mixes old and new state:
  ``h_j <- w_j h_j' + (1 - w_j) h_j`` (same for ``c``). The dense upper bound.

Parameters per layer (SqueezeLSTM): ``k (4s(m + s) + 8s)`` plus ``n k + k`` for the ``hidden``/``soft``
router when ``k > 1`` (``n k`` without bias). ``k = 1`` is exactly the reference LSTM.

FLOPs (``count_flops``) count matmul multiply-adds of one token in eval mode: the input projection
(``round_robin`` and ``token``, whose choices are known before the step: the chosen sub-cell's only,
``4 s m``, which is what their fast paths compute; ``hidden`` and ``soft``: all sub-cells', ``4 n m``,
one whole-window matmul, cheaper than gathering), the chosen sub-cell's recurrent matmul (``4 s^2``;
all ``k`` for ``soft``: ``4 n s``) and the router (``n k``). Element-wise gate maths is not counted.

Execution: on CPU, ``token`` and ``round_robin`` compact each sub-cell's steps and run them as one
masked recurrence (``_forward_compacted``); ``k = 1`` and ``round_robin`` on the CUDA path (cuDNN) run k
fused LSTM calls on strided sub-sequences, and ``token`` there one packed fused call per sub-cell
(``_fused.packed_routing``). All compute only the chosen sub-cell's input projections.
When sequences in a batch pick different sub-cells by ``hidden`` routing in eval, the code updates all
``k`` sub-cells (one ``bmm``) and keeps the chosen one, which executes ``4 n s`` multiply-adds instead
of the counted ``4 s^2``: measured on CPU it is 2-20x faster than gathering each sequence's ``(s, 4s)``
weights, so there ``count_flops`` is the cell's intrinsic recurrent cost (what a per-cell kernel
needs), not the batched implementation's.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._base import RecurrentLayer, RecurrentStack, State, check_positive_int, optional_parameters
from ._family_args import check_sizes
from ._fused import compacted_routing
from ._kernels import gpu_path
from ._recurrence import compiled_kernels, linear_recurrence, strided_lstms
from ._routed_hidden import hidden_routed_forward
from ._rows import PermuteRows, SegmentLinear
from .families import ROUTINGS
from .lstm import lstm_pointwise

HASH_BITS = 16
HASH_SEED = 0x5EED


def _check_routed_args(input_size: Any, hidden_size: Any, num_layers: Any, family_args: dict) -> dict:
    unknown = sorted(set(family_args) - {"num_cells", "routing"})
    if unknown:
        raise ValueError(f"{RoutedLSTM.family}: unexpected family argument {unknown[0]}={family_args[unknown[0]]!r}; "
                         "it takes num_cells, routing")
    check_sizes(input_size, hidden_size, num_layers)
    family_args = RoutedLSTM.with_defaults(family_args)
    k = check_positive_int("num_cells", family_args["num_cells"])
    routing = family_args["routing"]
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {list(ROUTINGS)}, got routing={routing!r}")
    if hidden_size % k:
        raise ValueError(f"num_cells={k} must divide hidden_size={hidden_size}")
    return {"num_cells": k, "routing": routing}


class RoutedLayer(RecurrentLayer):
    """One SqueezeLSTM layer: ``num_cells`` sub-cells, one updated per sequence and step (``soft``: all, mixed).

    Parameters: ``weight_ih`` (4n, m) with sub-cell ``j`` in rows ``[4s j, 4s (j+1))``, ``weight_hh``
    (k, 4s, s), ``bias_ih``/``bias_hh`` (4n,), and for ``hidden``/``soft`` routing with k > 1
    ``router_weight`` (k, n) and ``router_bias`` (k,). ``token`` routing keeps ``hash_proj`` (m, 16), a buffer.
    """

    gumbel_tau = 1.0

    def __init__(self, input_size: int, hidden_size: int, num_cells: int, routing: str, bias: bool = True,
                 hash_seed: int = HASH_SEED, device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_cells, self.routing = num_cells, routing
        self.cell_size = s = hidden_size // num_cells
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **fk))
        self.weight_hh = nn.Parameter(torch.empty(num_cells, 4 * s, s, **fk))
        optional_parameters(self, bias, {"bias_ih": (4 * hidden_size,), "bias_hh": (4 * hidden_size,)}, **fk)
        if num_cells > 1 and routing in ("hidden", "soft"):
            self.router_weight = nn.Parameter(torch.empty(num_cells, hidden_size, **fk))
            self.register_parameter("router_bias", nn.Parameter(torch.empty(num_cells, **fk)) if bias else None)
        else:
            self.register_parameter("router_weight", None)
            self.register_parameter("router_bias", None)
        if num_cells > 1 and routing == "token":
            gen = torch.Generator().manual_seed(hash_seed)
            proj = torch.randn(input_size, HASH_BITS, generator=gen)
            self.register_buffer("hash_proj", proj.to(**{k: v for k, v in fk.items() if v is not None}))
            self.register_buffer("hash_powers", 2 ** torch.arange(HASH_BITS, device=device), persistent=False)
        # Set by RoutedLSTM.forward for the duration of one call (nn.LSTM's layer call takes no extras).
        self.offset = 0
        self.generator: torch.Generator | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each sub-cell is initialised like an nn.LSTM of its own width, so k = 1 matches nn.LSTM.
        bound = 1.0 / math.sqrt(self.cell_size)
        for name, p in self.named_parameters():
            b = 1.0 / math.sqrt(self.hidden_size) if name.startswith("router") else bound
            nn.init.uniform_(p, -b, b)

    # -- routing ---------------------------------------------------------------------------------
    def token_choices(self, x: Tensor) -> Tensor:
        """Sub-cell index of each input vector ``x`` (..., m) under the fixed hash; a long tensor (...)."""
        bits = (x @ self.hash_proj.to(x.dtype)) > 0
        return (bits.long() * self.hash_powers).sum(-1) % self.num_cells

    def _choices(self, x: Tensor) -> Tensor:
        """``round_robin`` and ``token``: the sub-cell of every token of the window (T*N,), row t*N + b."""
        if self.routing == "token":
            return self.token_choices(x).flatten()
        return ((self.offset + torch.arange(x.size(0), device=x.device)) % self.num_cells).repeat_interleave(x.size(1))

    def _router_logits(self, h: Tensor) -> Tensor:
        return F.linear(h, self.router_weight, self.router_bias)

    def _gumbel_st(self, logits: Tensor) -> Tensor:
        """Straight-through Gumbel-softmax weights (N, k): one-hot forward, softmax gradient."""
        noise = -torch.empty_like(logits).exponential_(generator=self.generator).log()
        soft = torch.softmax((logits + noise) / self.gumbel_tau, dim=-1)
        hard = F.one_hot(soft.argmax(-1), self.num_cells).to(soft.dtype)
        return hard - soft.detach() + soft

    # -- fast path -------------------------------------------------------------------------------
    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        T, N = x.shape[0], x.shape[1]
        k, s = self.num_cells, self.cell_size
        on_gpu = gpu_path(x, h)
        if k > 1 and self.routing in ("hidden", "soft") and on_gpu:
            from ._triton_routed import routed_window  # triton is imported on the GPU path only
            return routed_window(self, x, state)
        if k > 1 and on_gpu and self.routing in ("round_robin", "token"):  # fused LSTM kernel (_fused.py)
            return compacted_routing(x, state, self._choices(x), self.weight_ih.view(k, 4 * s, -1), self.weight_hh,
                                     *(None if b is None else b.view(k, 4 * s) for b in (self.bias_ih, self.bias_hh)))
        if k == 1 or (self.routing == "round_robin" and compiled_kernels(x) is None):
            # Sub-cell j updates only at the steps with (offset + t) mod k == j: it is an ordinary
            # LSTM on that strided sub-sequence, so torch's fused kernel runs each one, computing only
            # its own input projections (4 s (m + s) multiply-adds a token in all). Where the compiled
            # loops run (CPU), the compacted path below is faster: one node for all k sub-cells.
            return strided_lstms(x, state, self._cell_weights(), self.offset)
        if self.routing in ("round_robin", "token"):
            return self._forward_compacted(x, h, c, self._choices(x))
        if self.routing == "hidden" and compiled_kernels(x) is not None:  # CPU: one compiled loop (_routed_hidden)
            return hidden_routed_forward(self, x, h, c)
        # Input projections of every sub-cell for the whole window in one matmul: (T, N, k, 4s).
        xw = F.linear(x, self.weight_ih, self.bias_ih)
        if self.bias_hh is not None:
            xw = xw + self.bias_hh
        # unbind once: indexing xw[t] every step would make backward allocate a whole-window zero tensor per step.
        xs = xw.view(T, N, k, 4 * s).unbind(0)
        w_hh_t = self.weight_hh.transpose(1, 2)  # (k, s, 4s): h_j @ w_hh_t[j]
        if k > 1 and (self.routing == "soft" or (self.routing == "hidden" and self.training)):
            return self._forward_mixed(xs, h, c, w_hh_t)
        if k > 1 and self.routing == "hidden" and N > 1:
            return self._forward_selected(x, xs, h, c, w_hh_t)
        # hidden routing, eval, a single sequence: one sub-cell a step, update only its slice of the state.
        hs, cs = list(h.view(N, k, s).unbind(1)), list(c.view(N, k, s).unbind(1))
        ws = w_hh_t.unbind(0)
        outs: list[list[Tensor]] = [[] for _ in range(k)]  # per sub-cell, its h after every step
        for t in range(T):
            j = int(self._router_logits(torch.cat(hs, 1)).argmax())
            hs[j], cs[j] = lstm_pointwise(xs[t][:, j] + hs[j] @ ws[j], cs[j])
            for out, hj in zip(outs, hs):
                out.append(hj)
        # k stacks and one cat rather than a cat of all k slices every step.
        output = torch.cat([torch.stack(out) for out in outs], -1)
        return output, (output[-1], torch.cat(cs, 1))

    def _cell_weights(self) -> list[list[Tensor]]:
        """Sub-cell j's ``[W_ih, W_hh, b_ih, b_hh]`` (views), in ``fused_lstm``'s layout."""
        s = self.cell_size
        weights = []
        for j in range(self.num_cells):
            rows = slice(4 * s * j, 4 * s * (j + 1))
            w = [self.weight_ih[rows], self.weight_hh[j]]
            if self.bias_ih is not None:
                w += [self.bias_ih[rows], self.bias_hh[rows]]
            weights.append(w)
        return weights

    def _forward_compacted(self, x: Tensor, h: Tensor, c: Tensor, choice: Tensor) -> tuple[Tensor, State]:
        """``token`` and ``round_robin`` routing, ``choice`` (T*N,) the sub-cell of token t*N + b: the
        choices are known for the whole window up front, so each sub-cell's steps are compacted per
        sequence (sub-cell j of sequence b sees only the steps routed to it, padded to the longest such
        run L) and all sub-cells run as one masked recurrence node of L steps (one matmul per sub-cell a
        step); the output is gathered back to the T steps.

        Input projections are computed for the routed tokens only: sorted by sub-cell, one matmul per
        sub-cell over exactly its tokens (``SegmentLinear``), then moved into the recurrence's padded
        (k, L, N) layout. Both moves are row permutations with a known inverse (``PermuteRows``): their
        backward is a gather too, not an accumulating scatter."""
        T, N = x.shape[0], x.shape[1]
        k, s, m = self.num_cells, self.cell_size, self.input_size
        dev = x.device
        if T == 0:
            return x.new_empty(0, N, k * s), (h, c)
        onehot = F.one_hot(choice, k)
        updates = onehot.view(T, N, k).cumsum(0)  # (T, N, k): updates sub-cell j of sequence b has made by step t
        L = int(updates[-1].max())
        tokens = torch.arange(T * N, device=dev)
        u = updates.view(T * N, k).gather(1, choice.unsqueeze(1)).squeeze(1) - 1  # the token's update index
        # Within each sub-cell, sequences are ordered by how many steps they route to it (most first), so
        # at every compacted step the updated sequences are a prefix and the kernels' matmuls skip the rest.
        by_count = torch.argsort(updates[-1].t().contiguous(), dim=1, descending=True, stable=True)  # rank -> sequence
        rank = torch.empty_like(by_count).scatter_(1, by_count, torch.arange(N, device=dev).expand(k, N))
        slot = (choice * L + u) * N + rank.view(-1)[choice * N + tokens % N]  # its row in the recurrence layout (k, L, N)
        order = torch.argsort(choice, stable=True)  # tokens grouped by sub-cell
        sorted_row = torch.empty_like(tokens).scatter_(0, order, tokens)  # the token's row in that order
        xs = PermuteRows.apply(x.reshape(T * N, m), sorted_row, T * N, None)
        xw = SegmentLinear.apply(xs, self.weight_ih.view(k, 4 * s, m), onehot.sum(0).tolist())
        keep = torch.zeros(k * L * N, dtype=torch.bool, device=dev)
        keep[slot] = True
        xw = PermuteRows.apply(xw, slot[order], k * L * N, keep)
        bias = None if self.bias_ih is None else (self.bias_ih + self.bias_hh).view(k, 4 * s)
        to_rank, to_seq = by_count.unsqueeze(-1).expand(k, N, s), rank.unsqueeze(-1).expand(k, N, s)
        hk = h.view(N, k, s).transpose(0, 1).gather(1, to_rank)  # (k, N, s), sequences in rank order
        ck = c.view(N, k, s).transpose(0, 1).gather(1, to_rank)
        out, h_n, c_n = linear_recurrence(xw.view(k, L, N, 4 * s), hk, ck, (self.weight_hh.transpose(1, 2),),
                                          keep.view(k, L, N, 1), bias=bias)
        seq = torch.cat([hk.transpose(0, 1).reshape(1, N, k * s), out]).view((L + 1) * N * k, s)  # state after u updates
        # output row (t, b, j) is state row (updates[t, b, j], rank[j, b], j)
        src = (updates * N + rank.t()) * k + torch.arange(k, device=dev)
        output = seq.index_select(0, src.flatten()).view(T, N, k * s)
        h_n, c_n = h_n.gather(1, to_seq), c_n.gather(1, to_seq)
        return output, (h_n.transpose(0, 1).reshape(N, k * s), c_n.transpose(0, 1).reshape(N, k * s))

    def _forward_mixed(self, xs, h, c, w_hh_t) -> tuple[Tensor, State]:
        """``soft`` and ``hidden`` in training: every sub-cell updates; router weights mix old and new."""
        N, k, s = h.size(0), self.num_cells, self.cell_size
        hk, ck = h.view(N, k, s), c.view(N, k, s)
        outs = []
        for xt in xs:
            rec = torch.bmm(hk.transpose(0, 1), w_hh_t).transpose(0, 1)  # (N, k, 4s), k batched matmuls
            hn, cn = lstm_pointwise(xt + rec, ck)
            logits = self._router_logits(hk.reshape(N, k * s))
            w = torch.softmax(logits, -1) if self.routing == "soft" else self._gumbel_st(logits)
            w = w.unsqueeze(-1)  # (N, k, 1)
            hk, ck = w * hn + (1 - w) * hk, w * cn + (1 - w) * ck
            outs.append(hk.reshape(N, k * s))
        return torch.stack(outs), (outs[-1], ck.reshape(N, k * s))

    def _forward_selected(self, x, xs, h, c, w_hh_t) -> tuple[Tensor, State]:
        """``hidden`` in eval with sequences routed to different sub-cells.

        Computing all k candidate updates (one bmm) and keeping the chosen one beats gathering each
        sequence's (s, 4s) weights (2-20x on CPU: the gather copies N s 4s floats a step) and beats
        selecting before the element-wise update (fewer ops a step), although it executes 4ns
        instead of 4s^2 multiply-adds.
        """
        N, k, s = h.size(0), self.num_cells, self.cell_size
        hk, ck = h.view(N, k, s), c.view(N, k, s)
        outs = []
        for t, xt in enumerate(xs):
            idx = self._router_logits(hk.reshape(N, k * s)).argmax(-1)
            hn, cn = lstm_pointwise(xt + torch.bmm(hk.transpose(0, 1), w_hh_t).transpose(0, 1), ck)  # (N, k, s)
            keep = F.one_hot(idx, k).bool().unsqueeze(-1)  # (N, k, 1)
            hk, ck = torch.where(keep, hn, hk), torch.where(keep, cn, ck)
            outs.append(hk.reshape(N, k * s))
        return torch.stack(outs), (outs[-1], ck.reshape(N, k * s))

    # -- slow reference --------------------------------------------------------------------------
    def forward_reference(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Obviously-correct per-step, per-sequence, per-sub-cell loop; tests compare ``forward`` to it.

        Draws Gumbel noise in the same order as ``forward`` (one (N, k) draw a step), so with the same
        generator state it routes identically in training mode too.
        """
        h, c = state
        T, N = x.shape[0], x.shape[1]
        k, s = self.num_cells, self.cell_size
        mixing = k > 1 and (self.routing == "soft" or (self.routing == "hidden" and self.training))
        outs = []
        for t in range(T):
            weights = None
            if k > 1 and self.routing in ("hidden", "soft"):
                logits = self._router_logits(h)
                if self.routing == "soft":
                    weights = torch.softmax(logits, -1)
                elif self.training:
                    weights = self._gumbel_st(logits)
                else:
                    weights = F.one_hot(logits.argmax(-1), k).to(h.dtype)
            new_h, new_c = [], []
            for b in range(N):
                if k == 1:
                    chosen = 0
                elif self.routing == "round_robin":
                    chosen = (self.offset + t) % k
                elif self.routing == "token":
                    chosen = int(self.token_choices(x[t, b]))
                else:
                    chosen = int(weights[b].argmax())
                hs, cs = [], []
                for j in range(k):
                    hj, cj = h[b, j * s:(j + 1) * s], c[b, j * s:(j + 1) * s]
                    rows = slice(4 * s * j, 4 * s * (j + 1))
                    gates = self.weight_ih[rows] @ x[t, b] + self.weight_hh[j] @ hj
                    if self.bias_ih is not None:
                        gates = gates + self.bias_ih[rows] + self.bias_hh[rows]
                    hj_new, cj_new = lstm_pointwise(gates, cj)
                    if mixing:
                        w = weights[b, j]
                        hj_new, cj_new = w * hj_new + (1 - w) * hj, w * cj_new + (1 - w) * cj
                    elif j != chosen:
                        hj_new, cj_new = hj, cj
                    hs.append(hj_new)
                    cs.append(cj_new)
                new_h.append(torch.cat(hs))
                new_c.append(torch.cat(cs))
            h, c = torch.stack(new_h), torch.stack(new_c)
            outs.append(h)
        return torch.stack(outs), (h, c)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, num_cells={self.num_cells}, routing={self.routing}"


class RoutedLSTM(RecurrentStack):
    """SqueezeLSTM: ``num_cells`` sub-cells of width ``hidden_size / num_cells``; ``routing`` picks one per step.

    Same constructor, state layout and forward as ``torch.nn.LSTM``, plus the ``forward`` keywords
    ``offset`` (stream position of ``input[0]``, used by ``round_robin``) and ``generator`` (Gumbel
    noise for ``hidden`` routing in training mode; torch's default generator if None).
    """

    def make_layer(self, index, input_size, hidden_size, bias, factory_kwargs, *, num_cells, routing):
        return RoutedLayer(input_size, hidden_size, num_cells, routing, bias, hash_seed=HASH_SEED + index, **factory_kwargs)

    def forward(self, input: Tensor, hx: State | None = None, offset: int = 0,
                generator: torch.Generator | None = None) -> tuple[Tensor, State]:
        """Run the stack like ``nn.LSTM``; ``offset`` is the stream position of the first step.

        Returns ``(output, (h_n, c_n))`` exactly as ``RecurrentStack.forward``.
        """
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got offset={offset!r}")
        offset = int(offset)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        for layer in self.layers:
            layer.offset, layer.generator = offset, generator
        try:
            return super().forward(input, hx)
        finally:
            for layer in self.layers:
                layer.offset, layer.generator = 0, None

    @classmethod
    def check_args(cls, input_size: int, hidden_size: int, num_layers: int = 1, **family_args: Any) -> dict:
        """Validate the family arguments; returns ``{"num_cells": k, "routing": r}`` (defaults 2, "hidden")."""
        return _check_routed_args(input_size, hidden_size, num_layers, family_args)

    @staticmethod
    def layer_parameters(input_size: int, hidden_size: int, bias: bool = True, *, num_cells: int, routing: str) -> int:
        """Exact parameter count of one layer: k (4s(m + s) + 8s), plus the router n k + k (hidden, soft)."""
        k, n, m = num_cells, hidden_size, input_size
        s = n // k
        router = (n * k + (k if bias else 0)) if (k > 1 and routing in ("hidden", "soft")) else 0
        return k * (4 * s * (m + s) + (8 * s if bias else 0)) + router

    @staticmethod
    def layer_flops(input_size: int, hidden_size: int, *, num_cells: int, routing: str) -> int:
        """Matmul multiply-adds of one token through one layer in eval mode (see the module docstring)."""
        k, n, m = num_cells, hidden_size, input_size
        s = n // k
        recurrent = k * 4 * s * s if routing == "soft" else 4 * s * s
        router = n * k if (k > 1 and routing in ("hidden", "soft")) else 0
        projected = s if routing in ("round_robin", "token") else n  # units whose input projection runs
        return 4 * projected * m + recurrent + router
