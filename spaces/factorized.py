"""F-LSTM: the LSTM with a low-rank gate matrix (Kuchaiev & Ginsburg 2017, "Factorization tricks
for LSTM networks", arXiv 1703.10722, section 2.1).

The LSTM's affine map T: [x_t; h_{t-1}] (m + n) -> 4n gates is replaced by a product through a
rank-r bottleneck, with no bias on the inner factor (the paper's "W2 W1"):

    z_t          = W1 [x_t; h_{t-1}]                 W1: (r, m + n), no bias
    [i; f; g; o] = W2 z_t + b                        W2: (4n, r),    b: (4n,)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),     h_t = sigmoid(o) * tanh(c_t)

Parameters per layer: r(m + n) + 4nr + 4n. Like the paper, F-LSTM keeps ONE bias vector of 4n
(the reference LSTM keeps torch's two, 8n). ``rank`` is an int or one int per layer, with
1 <= r <= min(4n, m + n) (a larger rank cannot be realised by the (4n, m + n) matrix).
FLOPs (matmul multiply-adds per token, one sequence) per layer: r(m + n) + 4nr; element-wise gate
maths and bias additions are not counted (the same convention in every family).

r = min(4n, m + n) represents every LSTM: e.g. W1 = identity, W2 = [W_ih W_hh] when m + n <= 4n.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from . import _fused
from ._base import RecurrentLayer, RecurrentStack, State, optional_parameters
from ._family_args import per_layer_checked
from ._kernels import gpu_path
from ._recurrence import bottleneck_recurrence
from .lstm import lstm_pointwise


class FactorizedLSTMLayer(RecurrentLayer):
    """One F-LSTM layer: ``weight_in`` = W1 (r, m + n), ``weight_out`` = W2 (4n, r), ``bias`` (4n,)."""

    def __init__(self, input_size: int, hidden_size: int, rank: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.rank = input_size, hidden_size, rank
        self.weight_in = nn.Parameter(torch.empty(rank, input_size + hidden_size, **fk))
        self.weight_out = nn.Parameter(torch.empty(4 * hidden_size, rank, **fk))
        optional_parameters(self, bias, {"bias": (4 * hidden_size,)}, **fk)
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, rank={self.rank}, bias={self.bias is not None}"

    def recurrent_weight(self) -> tuple[str, Tensor | None]:
        """The h half of the shared bottleneck: ``weight_in[:, m:]``."""
        region = torch.zeros_like(self.weight_in, dtype=torch.bool)
        region[:, self.input_size:] = True
        return "weight_in", region

    def reset_parameters(self) -> None:
        # Each factor gets torch's fan-in bound, so the product starts at a sensible scale.
        nn.init.uniform_(self.weight_in, -1.0 / math.sqrt(self.weight_in.size(1)), 1.0 / math.sqrt(self.weight_in.size(1)))
        nn.init.uniform_(self.weight_out, -1.0 / math.sqrt(self.rank), 1.0 / math.sqrt(self.rank))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.hidden_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        m = self.input_size
        if gpu_path(x, h) and self.hidden_size < _fused.PRODUCT_MAX_HIDDEN:
            # cuDNN on the product W2 W1, formed once a window (_fused.py); wider cells keep the bottleneck
            return _fused.factorized_fused(x, state, self.weight_in, self.weight_out, self.bias)
        # The x half of the bottleneck for the whole window in one matmul: (T, N, r). Per step only
        # z = xz_t + h W1h^T and gates = z W2^T + b remain (two small matmuls, exactly the counted
        # multiply-adds), run by one autograd node with a hand-written backward.
        xz = x @ self.weight_in[:, :m].t()
        if gpu_path(x, h):  # wide cells on the CUDA path: one Triton launch a step and direction
            from ._triton_factorized import bottleneck_window
            return bottleneck_window(xz, h, c, self.weight_in[:, m:].t(), self.weight_out.t(), self.bias)
        out, h_n, c_n = bottleneck_recurrence(xz, h, c, self.weight_in[:, m:].t(), self.weight_out.t(), self.bias)
        return out, (h_n, c_n)

    def forward_reference(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Slow, obviously-correct version: the full gate matrix W2 W1 applied to [x_t; h] each step."""
        h, c = state
        weight = self.weight_out @ self.weight_in  # (4n, m + n)
        outs = []
        for t in range(x.size(0)):
            gates = torch.cat([x[t], h], dim=-1) @ weight.t()
            if self.bias is not None:
                gates = gates + self.bias
            h, c = lstm_pointwise(gates, c)
            outs.append(h)
        return torch.stack(outs), (h, c)


class FactorizedLSTM(RecurrentStack):
    """Multi-layer F-LSTM with the ``torch.nn.LSTM`` interface; ``rank`` is an int or one per layer."""

    layer_class = FactorizedLSTMLayer

    @classmethod
    def check_args(cls, input_size: int, hidden_size: int, num_layers: int = 1, *, rank: Any = None) -> dict:
        """Validate ``rank`` (1 <= r <= min(4n, m + n) on every layer); returns ``{"rank": int | tuple}``."""

        def problem(layer: int, m: int, n: int, r: int) -> str | None:
            limit = min(4 * n, m + n)
            if r > limit:
                return (f"is larger than the (4*hidden_size, input+hidden) gate matrix allows: "
                        f"rank must be <= min(4*{n}, {m}+{n}) = {limit}")
            return None

        normalised = per_layer_checked("rank", rank, input_size, hidden_size, num_layers, problem)
        return {"rank": normalised}

    @staticmethod
    def layer_parameters(input_size: int, hidden_size: int, bias: bool = True, *, rank: int) -> int:
        """Exact parameter count of one layer: r(m + n) + 4nr (+ 4n with bias)."""
        n = hidden_size
        return rank * (input_size + n) + 4 * n * rank + (4 * n if bias else 0)

    @staticmethod
    def layer_flops(input_size: int, hidden_size: int, *, rank: int) -> int:
        """Matmul multiply-adds of one token through one layer: r(m + n) + 4nr."""
        return rank * (input_size + hidden_size) + 4 * hidden_size * rank
