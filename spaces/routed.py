"""RoutedLSTM (family ``routed``): SqueezeLSTM, k small LSTM sub-cells with one chosen per step.

Work in progress: the class names and classmethod signatures are final; the layer is being written.
"""

from __future__ import annotations

from typing import Any

from ._base import RecurrentStack, check_positive_int

ROUTINGS = ("hidden", "round_robin", "token", "soft")


class RoutedLSTM(RecurrentStack):
    """SqueezeLSTM: ``num_cells`` sub-cells of width ``hidden_size / num_cells``; ``routing`` picks one per step."""

    family = "routed"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 device=None, dtype=None, *, num_cells: int = 2, routing: str = "hidden") -> None:
        args = self.check_args(input_size, hidden_size, num_layers, num_cells=num_cells, routing=routing)
        self.num_cells, self.routing = args["num_cells"], args["routing"]
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, device, dtype)

    def make_layer(self, index, input_size, hidden_size, bias, factory_kwargs):
        raise NotImplementedError("RoutedLSTM layer is being written")

    @classmethod
    def check_args(cls, input_size: int, hidden_size: int, num_layers: int = 1, **family_args: Any) -> dict:
        """Validate family arguments; return them normalised as ``{"num_cells": k, "routing": r}``."""
        unknown = set(family_args) - {"num_cells", "routing"}
        if unknown:
            raise ValueError(f"routed: unexpected family argument(s) {sorted(unknown)}; it takes num_cells, routing")
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_layers", num_layers)
        k = check_positive_int("num_cells", family_args.get("num_cells", 2))
        routing = family_args.get("routing", "hidden")
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {list(ROUTINGS)}, got routing={routing!r}")
        if hidden_size % k:
            raise ValueError(f"num_cells={k} must divide hidden_size={hidden_size}")
        return {"num_cells": k, "routing": routing}

    @classmethod
    def count_parameters(cls, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                         **family_args: Any) -> int:
        """Exact parameter count (equals the module's ``numel`` sum)."""
        a = cls.check_args(input_size, hidden_size, num_layers, **family_args)
        k, n = a["num_cells"], hidden_size
        total = 0
        for layer in range(num_layers):
            m = input_size if layer == 0 else n
            h = n // k
            total += k * (4 * h * (m + h) + (8 * h if bias else 0))
            if k > 1 and a["routing"] in ("hidden", "soft"):
                total += n * k + (k if bias else 0)
        return total

    @classmethod
    def count_flops(cls, input_size: int, hidden_size: int, num_layers: int = 1, **family_args: Any) -> int:
        """Matmul multiply-adds per token (eval mode), all layers; element-wise maths not counted."""
        a = cls.check_args(input_size, hidden_size, num_layers, **family_args)
        k, n = a["num_cells"], hidden_size
        h = n // k
        total = 0
        for layer in range(num_layers):
            m = input_size if layer == 0 else n
            total += m * 4 * n
            total += k * 4 * h * h if a["routing"] == "soft" else 4 * h * h
            if k > 1 and a["routing"] in ("hidden", "soft"):
                total += n * k
        return total
