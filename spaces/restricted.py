"""Restricted LSTM: input-side and hidden-side gate weights drawn from one shared row pool
(Diao, Ding & Tarokh 2019, "Restricted Recurrent Neural Networks", arXiv 1908.07724).

The structure follows the authors' code (``oConv2d`` in diaoenmao/Restricted-Recurrent-Neural-Networks):
a layer owns ONE weight pool P of shape (s + 8(n - s), max(m, n)) and a bias pool of s + 8(n - s),
where s = round(share * n). Rows 0..s-1 are shared by all four gates on BOTH sides; each of the
8 (side, gate) blocks then takes its own n - s private rows, in the order x-i, x-f, x-g, x-o,
h-i, h-f, h-g, h-o. The input side reads the first m columns of its rows, the hidden side the
first n columns:

    R_x^k = rows [0, s) ++ private rows of (x, k)         R_h^k = rows [0, s) ++ private rows of (h, k)
    k_t   = P[R_x^k, :m] x_t + b[R_x^k] + P[R_h^k, :n] h_{t-1} + b[R_h^k]     for k in i, f, g, o
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),     h_t = sigmoid(o) * tanh(c_t)

Parameters per layer, exactly as the authors' code counts them: (s + 2*4*(n - s)) * (max(m, n) + 1)
(the "+1" is the bias; without bias (s + 8(n - s)) * max(m, n)). When m != n the narrower side's
private rows carry max(m, n) - min(m, n) columns that are never read (so their gradient is zero):
they exist only because the pool is rectangular, as in the authors' code.
FLOPs (matmul multiply-adds per token, one sequence) per layer: 4n(m + n), the same as the LSTM:
sharing saves parameters, not work, since shared rows are applied once per gate as in the
authors' code (element-wise maths and bias additions not counted).

share = 0 has the same 8n free rows as an LSTM (with m = n even the same count): copying W_ih,
W_hh, b_ih, b_hh into the private rows gives exactly the LSTM's function.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

from ._base import RecurrentLayer, RecurrentStack, State, optional_parameters
from ._family_args import check_sizes
from .lstm import LSTM, fused_lstm, lstm_pointwise


def shared_rows(share: float, hidden_size: int) -> int:
    """s = round(share * n), the number of pool rows shared by every gate on both sides.

    Rounds like ``torch.round`` in the authors' code (half to even), computed in float32 as there.
    """
    return int(torch.round(torch.tensor(float(hidden_size), dtype=torch.float32) * share).item())


def pool_row_indices(share: float, hidden_size: int) -> tuple[Tensor, Tensor]:
    """Pool rows feeding the input side and the hidden side: two (4n,) index tensors, gates i, f, g, o."""
    n = hidden_size
    s = shared_rows(share, n)
    shared = torch.arange(s)
    pivot = s
    sides = []
    for _side in range(2):
        blocks = []
        for _gate in range(4):
            blocks.append(torch.cat([shared, torch.arange(pivot, pivot + n - s)]))
            pivot += n - s
        sides.append(torch.cat(blocks))
    return sides[0], sides[1]


def check_share(share: Any) -> float:
    """Return ``share`` as a float if it is a number in [0, 1], else raise a ValueError naming it."""
    if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0.0 <= float(share) <= 1.0:
        raise ValueError(f"share must be a number in [0, 1], got share={share!r}")
    return float(share)


def _per_layer_share(share: Any, num_layers: int) -> float | tuple[float, ...]:
    if share is None:
        raise ValueError("share is required, got share=None")
    if isinstance(share, (list, tuple)):
        if len(share) != num_layers:
            raise ValueError(f"share given per layer must have num_layers={num_layers} entries, got share={list(share)!r}")
        return tuple(check_share(v) for v in share)
    return check_share(share)


class RestrictedLSTMLayer(RecurrentLayer):
    """One Restricted LSTM layer: ``weight`` pool (s + 8(n - s), max(m, n)) and ``bias`` pool (s + 8(n - s),)."""

    def __init__(self, input_size: int, hidden_size: int, share: float, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.share = input_size, hidden_size, share
        n = hidden_size
        s = shared_rows(share, n)
        rows = s + 8 * (n - s)
        self.weight = nn.Parameter(torch.empty(rows, max(input_size, n), **fk))
        optional_parameters(self, bias, {"bias": (rows,)}, **fk)
        rows_x, rows_h = pool_row_indices(share, n)
        # Index maps are structure, not state: rebuilt from (share, n), so kept out of state_dict.
        self.register_buffer("rows_x", rows_x.to(device), persistent=False)
        self.register_buffer("rows_h", rows_h.to(device), persistent=False)
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, share={self.share}, bias={self.bias is not None}"

    def recurrent_weight(self) -> tuple[str, Tensor | None]:
        """The pool rows the h side gathers, first n columns (rows the x side shares are the same entries)."""
        region = torch.zeros_like(self.weight, dtype=torch.bool)
        region[self.rows_h, : self.hidden_size] = True
        return "weight", region

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def gate_weights(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """The pool expanded to dense gate matrices: W_x (4n, m), W_h (4n, n) and the summed bias (4n,)."""
        w_x = self.weight.index_select(0, self.rows_x)[:, : self.input_size]
        w_h = self.weight.index_select(0, self.rows_h)[:, : self.hidden_size]
        b = None
        if self.bias is not None:
            b = self.bias.index_select(0, self.rows_x) + self.bias.index_select(0, self.rows_h)
        return w_x, w_h, b

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        # The pool expanded to dense gate matrices once per call (differentiable gathers, so the
        # gradients flow back into the pool), then torch's fused LSTM kernel: the effective
        # computation IS an LSTM, so it runs at nn.LSTM's speed plus one gather.
        w_x = self.weight.index_select(0, self.rows_x)[:, : self.input_size]
        w_h = self.weight.index_select(0, self.rows_h)[:, : self.hidden_size]
        weights = [w_x, w_h]
        if self.bias is not None:
            weights += [self.bias.index_select(0, self.rows_x), self.bias.index_select(0, self.rows_h)]
        return fused_lstm(x, state, weights)

    def forward_reference(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Slow, obviously-correct version: each (side, gate) block read row by row from the pool."""
        h, c = state
        n, m = self.hidden_size, self.input_size
        s = shared_rows(self.share, n)
        outs = []
        for t in range(x.size(0)):
            gate_pre = []
            for k in range(4):
                x_rows = list(range(s)) + list(range(s + k * (n - s), s + (k + 1) * (n - s)))
                h_rows = list(range(s)) + list(range(s + (4 + k) * (n - s), s + (5 + k) * (n - s)))
                pre = x[t] @ self.weight[x_rows, :m].t() + h @ self.weight[h_rows, :n].t()
                if self.bias is not None:
                    pre = pre + self.bias[x_rows] + self.bias[h_rows]
                gate_pre.append(pre)
            h, c = lstm_pointwise(torch.cat(gate_pre, dim=-1), c)
            outs.append(h)
        return torch.stack(outs), (h, c)


class RestrictedLSTM(RecurrentStack):
    """Multi-layer Restricted LSTM with the ``torch.nn.LSTM`` interface; ``share`` in [0, 1] (or one per layer)."""

    layer_class = RestrictedLSTMLayer

    @classmethod
    def check_args(cls, input_size: int, hidden_size: int, num_layers: int = 1, *, share: Any = None) -> dict:
        """Validate ``share`` (a number in [0, 1], or one per layer); returns ``{"share": float | tuple}``."""
        check_sizes(input_size, hidden_size, num_layers)
        return {"share": _per_layer_share(share, num_layers)}

    @staticmethod
    def layer_parameters(input_size: int, hidden_size: int, bias: bool = True, *, share: float) -> int:
        """Exact parameter count of one layer: (s + 8(n - s)) * (max(m, n) + 1), s = round(share * n)."""
        n = hidden_size
        s = shared_rows(share, n)
        return (s + 2 * 4 * (n - s)) * (max(input_size, n) + (1 if bias else 0))

    @staticmethod
    def layer_flops(input_size: int, hidden_size: int, *, share: float) -> int:
        """Matmul multiply-adds of one token through one layer: 4n(m + n), as the LSTM."""
        return LSTM.layer_flops(input_size, hidden_size)
