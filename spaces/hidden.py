"""HiddenLayerLSTM (family ``hidden``): H-LSTM, a ReLU hidden layer inside each gate, with grow-and-prune.

Work in progress: the class names and classmethod signatures are final; the layer is being written.
"""

from __future__ import annotations

from typing import Any

from ._base import RecurrentStack, check_positive_int


class HiddenLayerLSTM(RecurrentStack):
    """H-LSTM (Dai, Yin & Jha 2018): every gate is a one-hidden-layer ReLU network of width ``gate_hidden``."""

    family = "hidden"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 device=None, dtype=None, *, gate_hidden: int = 16) -> None:
        self.gate_hidden = self.check_args(input_size, hidden_size, num_layers, gate_hidden=gate_hidden)["gate_hidden"]
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, device, dtype)

    def make_layer(self, index, input_size, hidden_size, bias, factory_kwargs):
        raise NotImplementedError("HiddenLayerLSTM layer is being written")

    @classmethod
    def check_args(cls, input_size: int, hidden_size: int, num_layers: int = 1, **family_args: Any) -> dict:
        """Validate family arguments; return them normalised as ``{"gate_hidden": d}``."""
        unknown = set(family_args) - {"gate_hidden"}
        if unknown:
            raise ValueError(f"hidden: unexpected family argument(s) {sorted(unknown)}; it takes gate_hidden")
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_layers", num_layers)
        d = check_positive_int("gate_hidden", family_args.get("gate_hidden", 16))
        return {"gate_hidden": d}

    @classmethod
    def count_parameters(cls, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                         **family_args: Any) -> int:
        """Exact parameter count (equals the module's ``numel`` sum; pruning does not change it)."""
        d = cls.check_args(input_size, hidden_size, num_layers, **family_args)["gate_hidden"]
        n, total = hidden_size, 0
        for layer in range(num_layers):
            m = input_size if layer == 0 else n
            total += 4 * (d * (m + n) + n * d + ((d + n) if bias else 0))
        return total

    @classmethod
    def count_flops(cls, input_size: int, hidden_size: int, num_layers: int = 1, **family_args: Any) -> int:
        """Matmul multiply-adds per token, all layers, dense (unpruned); element-wise maths not counted."""
        d = cls.check_args(input_size, hidden_size, num_layers, **family_args)["gate_hidden"]
        n, total = hidden_size, 0
        for layer in range(num_layers):
            m = input_size if layer == 0 else n
            total += 4 * (d * (m + n) + n * d)
        return total
