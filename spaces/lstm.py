"""The reference LSTM (Hochreiter & Schmidhuber 1997), gate order i, f, g, o as in ``torch.nn.LSTM``.

    [i; f; g; o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh          W_ih: (4n, m), W_hh: (4n, n)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

Parameters per layer: 4n(m + n) + 8n (two bias vectors, as torch keeps them).
FLOPs (matmul multiply-adds per token, one sequence) per layer: 4n(m + n).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._base import RecurrentLayer, RecurrentStack, State, optional_parameters
from ._family_args import check_sizes


def lstm_pointwise(gates: Tensor, c: Tensor) -> State:
    """The LSTM's element-wise update from pre-activation ``gates`` (N, 4H) and cell ``c`` (N, H)."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def fused_lstm(x: Tensor, state: State, weights: list[Tensor]) -> tuple[Tensor, State]:
    """One LSTM layer through torch's fused kernel (``torch._VF.lstm``, what ``nn.LSTM`` calls).

    ``x`` is (T, N, m), ``state`` is ``(h, c)`` each (N, H) and ``weights`` is ``[W_ih (4H, m),
    W_hh (4H, H)]`` optionally followed by ``b_ih, b_hh`` (4H,), gate rows i, f, g, o. Returns
    ``(out (T, N, H), (h, c))``. Differentiable in every argument (the weights may be views or
    gathers of other parameters; gradients flow back through them).
    """
    h, c = state
    has_bias = len(weights) == 4
    # The kernel wants contiguous weights (cuDNN would otherwise copy them with a warning each call).
    weights = [w.contiguous() for w in weights]
    out, h_n, c_n = torch._VF.lstm(
        x.contiguous(), (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()), weights, has_bias, 1, 0.0, torch.is_grad_enabled(), False, False
    )
    return out, (h_n.squeeze(0), c_n.squeeze(0))


class LSTMLayer(RecurrentLayer):
    """One dense LSTM layer with torch's parameter names (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **fk))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **fk))
        optional_parameters(self, bias, {"bias_ih": (4 * hidden_size,), "bias_hh": (4 * hidden_size,)}, **fk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        # torch's own multi-step kernel (oneDNN on CPU, cuDNN on GPU) computes exactly this layer's
        # function from the same four tensors; a Python time loop runs at a fraction of its speed.
        weights = [self.weight_ih, self.weight_hh]
        if self.bias_ih is not None:
            weights += [self.bias_ih, self.bias_hh]
        return fused_lstm(x, state, weights)

    def forward_reference(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Slow, obviously-correct version: one matmul and ``lstm_pointwise`` per step."""
        h, c = state
        # Input projections for the whole window in one matmul: (T, N, 4H).
        xw = nn.functional.linear(x, self.weight_ih, self.bias_ih)
        if self.bias_hh is not None:
            xw = xw + self.bias_hh
        outs = []
        for t in range(x.size(0)):
            gates = xw[t] + h @ self.weight_hh.t()
            h, c = lstm_pointwise(gates, c)
            outs.append(h)
        return torch.stack(outs), (h, c)


class LSTM(RecurrentStack):
    """Plain multi-layer LSTM, the reference every compact family is measured against.

    Same constructor, forward and state layout as ``torch.nn.LSTM``; ``self.layers[i]`` holds layer
    ``i``'s ``weight_ih``/``weight_hh``/``bias_ih``/``bias_hh``.
    """

    layer_class = LSTMLayer

    @classmethod
    def check_args(cls, input_size: int, hidden_size: int, num_layers: int = 1, **family_args) -> dict:
        """The plain LSTM takes no family arguments; returns ``{}`` after checking the sizes."""
        check_sizes(input_size, hidden_size, num_layers)
        if family_args:
            name, value = next(iter(family_args.items()))
            raise ValueError(f"the plain LSTM takes no family arguments, got {name}={value!r}")
        return {}

    @staticmethod
    def layer_parameters(input_size: int, hidden_size: int, bias: bool = True) -> int:
        """Exact parameter count of one layer: ``4n(m + n) + 8n`` (two bias vectors, as torch keeps them)."""
        return 4 * hidden_size * (input_size + hidden_size) + (8 * hidden_size if bias else 0)

    @staticmethod
    def layer_flops(input_size: int, hidden_size: int) -> int:
        """Matmul multiply-adds of one token through one layer: ``4n(m + n)``."""
        return 4 * hidden_size * (input_size + hidden_size)
