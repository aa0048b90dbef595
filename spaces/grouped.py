"""G-LSTM: the LSTM split into independent groups (Kuchaiev & Ginsburg 2017, "Factorization tricks
for LSTM networks", arXiv 1703.10722, section 2.2).

With g groups, x_t and h_{t-1} are cut into g equal slices; group j sees only its slices and
produces the i, f, g, o pre-activations of its own n/g hidden units:

    [i_j; f_j; g_j; o_j] = W^x_j x_t^(j) + W^h_j h_{t-1}^(j) + b_j     W^x_j: (4n/g, m/g), W^h_j: (4n/g, n/g)
    c_t^(j) = sigmoid(f_j) * c_{t-1}^(j) + sigmoid(i_j) * tanh(g_j),   h_t^(j) = sigmoid(o_j) * tanh(c_t^(j))
    h_t = [h_t^(1); ...; h_t^(g)]

Parameters per layer: 4n(m + n)/g + 4n. Like the paper, G-LSTM keeps ONE bias vector of 4n (the
reference LSTM keeps torch's two, 8n). ``groups`` is an int or one int per layer (the paper's
hierarchical G-LSTM); on every layer g must divide both its input width m and n.
FLOPs (matmul multiply-adds per token, one sequence) per layer: 4n(m + n)/g (element-wise maths
and bias additions not counted).

Layout: ``weight_ih`` is (g, 4n/g, m/g), each group's rows ordered i, f, g, o, and ``bias`` is
(4n,) in the LSTM's i, f, g, o order over all units, so g = 1 is exactly ``LSTM`` with
``weight_ih[0] = W_ih``, ``weight_hh[0] = W_hh`` and ``bias = b_ih + b_hh``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ._base import RecurrentLayer, RecurrentStack, State, optional_parameters
from ._family_args import per_layer_checked
from ._fused import grouped_fused
from ._kernels import gpu_path
from ._recurrence import group_projection, linear_recurrence
from .lstm import lstm_pointwise

# Widest input group (m/g) whose x side runs inside the compiled loop; wider groups take the window-wide
# bmm. Paired A/B in one process on CPU, three runs (n = m, g = 4, bptt 35, training, 1 and 2 threads;
# median of t(window-wide) / t(in-loop)): m/g = 64 (n = 256) 0.98-1.06x, 7 of 8 above 1; m/g = 128
# (n = 512) 0.95-1.07x, no gain; m/g = 256 (n = 1024) 0.86-0.93x at batch 32. benchmarks/README.md, "Session 7".
FUSED_X_MAX_WIDTH = 64


class GroupedLSTMLayer(RecurrentLayer):
    """One G-LSTM layer: ``weight_ih`` (g, 4n/g, m/g), ``weight_hh`` (g, 4n/g, n/g), ``bias`` (4n,)."""

    def __init__(self, input_size: int, hidden_size: int, groups: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.groups = input_size, hidden_size, groups
        g = groups
        self.weight_ih = nn.Parameter(torch.empty(g, 4 * hidden_size // g, input_size // g, **fk))
        self.weight_hh = nn.Parameter(torch.empty(g, 4 * hidden_size // g, hidden_size // g, **fk))
        optional_parameters(self, bias, {"bias": (4 * hidden_size,)}, **fk)
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, groups={self.groups}, bias={self.bias is not None}"

    def reset_parameters(self) -> None:
        # torch's LSTM bound 1/sqrt(hidden) taken per group: each group is a small LSTM of n/g units.
        bound = 1.0 / math.sqrt(self.hidden_size // self.groups)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _group_bias(self) -> Tensor:
        """The (4n,) bias in i, f, g, o order, rearranged to group-major (g, 4n/g)."""
        g, n = self.groups, self.hidden_size
        return self.bias.view(4, g, n // g).transpose(0, 1).reshape(g, 4 * n // g)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        g, n = self.groups, self.hidden_size
        if gpu_path(x, h):
            # cuDNN: one block-diagonal LSTM, or one LSTM per group from BLOCK_DIAGONAL_MAX_HIDDEN (_fused.py)
            group_bias = None if self.bias is None else self._group_bias()
            return grouped_fused(x, state, self.weight_ih, self.weight_hh, self.bias, group_bias)
        batch = x.size(1)
        hg = h.view(batch, g, n // g).transpose(0, 1)  # (g, N, n/g)
        cg = c.view(batch, g, n // g).transpose(0, 1)
        # The bias goes into the recurrence's element-wise pass (broadcast into a matmul it cost more
        # than the whole projection).
        bias = None if self.bias is None else self._group_bias()
        # One autograd node for the window with a hand-written backward. For narrow groups the x side of
        # every group is computed inside it, one matmul per group a step next to the recurrent one, rather
        # than as a (g, T, N, 4n/g) buffer written by a window-wide bmm and read back; wide groups take the
        # window-wide bmm, which runs closer to the FMA peak than T small matmuls (see FUSED_X_MAX_WIDTH).
        w_hh = (self.weight_hh.transpose(1, 2),)
        if self.input_size // g <= FUSED_X_MAX_WIDTH:
            out, h_n, c_n = linear_recurrence(x, hg, cg, w_hh, bias=bias, x_weight=self.weight_ih.transpose(1, 2))
        else:
            xw = group_projection(x, self.weight_ih.transpose(1, 2))  # (g, T, N, 4n/g)
            out, h_n, c_n = linear_recurrence(xw, hg, cg, w_hh, bias=bias)

        def ungroup(s: Tensor) -> Tensor:
            return s.transpose(0, 1).reshape(batch, n)

        return out, (ungroup(h_n), ungroup(c_n))

    def forward_reference(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Slow, obviously-correct version: a Python loop over steps and groups, LSTM gate layout."""
        h, c = state
        g, n = self.groups, self.hidden_size
        mg, ng = self.input_size // g, n // g
        outs = []
        for t in range(x.size(0)):
            parts = [[None] * g for _ in range(4)]  # parts[gate][group]: (N, n/g)
            for j in range(g):
                pre = x[t, :, j * mg:(j + 1) * mg] @ self.weight_ih[j].t() + h[:, j * ng:(j + 1) * ng] @ self.weight_hh[j].t()
                for k, chunk in enumerate(pre.chunk(4, dim=-1)):
                    parts[k][j] = chunk
            gates = torch.cat([torch.cat(parts[k], dim=-1) for k in range(4)], dim=-1)  # (N, 4n) i, f, g, o
            if self.bias is not None:
                gates = gates + self.bias
            h, c = lstm_pointwise(gates, c)
            outs.append(h)
        return torch.stack(outs), (h, c)


class GroupedLSTM(RecurrentStack):
    """Multi-layer G-LSTM with the ``torch.nn.LSTM`` interface; ``groups`` is an int or one per layer."""

    layer_class = GroupedLSTMLayer

    @classmethod
    def check_args(cls, input_size: int, hidden_size: int, num_layers: int = 1, *, groups: Any = None) -> dict:
        """Validate ``groups`` (divides each layer's input width and hidden_size); returns ``{"groups": int | tuple}``."""

        def problem(layer: int, m: int, n: int, g: int) -> str | None:
            if m % g or n % g:
                width = "input_size" if layer == 0 else "hidden_size (layer input)"
                return f"must divide both {width}={m} and hidden_size={n}"
            return None

        normalised = per_layer_checked("groups", groups, input_size, hidden_size, num_layers, problem)
        return {"groups": normalised}

    @staticmethod
    def layer_parameters(input_size: int, hidden_size: int, bias: bool = True, *, groups: int) -> int:
        """Exact parameter count of one layer: 4n(m + n)/g (+ 4n with bias)."""
        n = hidden_size
        return 4 * n * (input_size + n) // groups + (4 * n if bias else 0)

    @staticmethod
    def layer_flops(input_size: int, hidden_size: int, *, groups: int) -> int:
        """Matmul multiply-adds of one token through one layer: 4n(m + n)/g."""
        return 4 * hidden_size * (input_size + hidden_size) // groups
