"""The multi-layer shell every cell family shares, shaped like ``torch.nn.LSTM``.

A family supplies one *layer*: a module mapping a window ``x`` of shape ``(T, N, in)`` and a state
``(h, c)`` of shapes ``(N, H)`` to ``(out, (h, c))`` with ``out`` of shape ``(T, N, H)``. The stack
handles everything ``nn.LSTM`` users expect: ``batch_first``, unbatched 2-D input, ``hx=None`` as
zeros, dropout between layers, and early shape checks with the expected and actual shapes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

State = tuple[Tensor, Tensor]


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1, else raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    return value


class RecurrentLayer(nn.Module):
    """One recurrent layer: ``forward(x (T, N, in), (h, c) each (N, H)) -> (out (T, N, H), (h, c))``."""

    input_size: int
    hidden_size: int

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:  # pragma: no cover - interface
        raise NotImplementedError


class RecurrentStack(nn.Module):
    """A stack of ``num_layers`` family layers with the ``torch.nn.LSTM`` interface.

    Subclasses set ``family`` (the name used by ``count_parameters`` and the search space) and
    implement ``make_layer(index, input_size, hidden_size, bias, factory_kwargs)``; family
    arguments are validated in the subclass ``__init__`` before ``super().__init__`` builds layers.
    """

    family: str = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got dropout={dropout!r}")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.layers = nn.ModuleList(
            self.make_layer(i, input_size if i == 0 else hidden_size, hidden_size, self.bias, factory_kwargs)
            for i in range(num_layers)
        )

    def make_layer(
        self, index: int, input_size: int, hidden_size: int, bias: bool, factory_kwargs: dict
    ) -> RecurrentLayer:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, input: Tensor, hx: State | None = None) -> tuple[Tensor, State]:
        """Run the stack. ``input`` is ``(T, N, in)`` (``(N, T, in)`` if ``batch_first``) or ``(T, in)``.

        Returns ``(output, (h_n, c_n))``: output ``(T, N, H)`` (batch-first if asked), and states
        ``(num_layers, N, H)`` whatever ``batch_first`` says (``(num_layers, H)`` when unbatched).
        """
        if input.dim() not in (2, 3):
            raise ValueError(
                f"{type(self).__name__}: expected input of 2 (unbatched) or 3 dimensions, got shape {tuple(input.shape)}"
            )
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        if x.size(-1) != self.input_size:
            raise ValueError(
                f"{type(self).__name__}: input.size(-1) must be input_size={self.input_size}, got {x.size(-1)}"
            )
        batch = x.size(1)
        expected = (self.num_layers, batch, self.hidden_size)
        if hx is None:
            zeros = x.new_zeros(expected)
            h0, c0 = zeros, zeros
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError(f"{type(self).__name__}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
            h0, c0 = hx
            if unbatched:
                want = (self.num_layers, self.hidden_size)
                for name, t in (("h_0", h0), ("c_0", c0)):
                    if tuple(t.shape) != want:
                        raise ValueError(f"{type(self).__name__}: expected {name} of shape {want}, got {tuple(t.shape)}")
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            for name, t in (("h_0", h0), ("c_0", c0)):
                if tuple(t.shape) != expected:
                    raise ValueError(f"{type(self).__name__}: expected {name} of shape {expected}, got {tuple(t.shape)}")

        h_n, c_n = [], []
        out = x
        for i, layer in enumerate(self.layers):
            if i > 0 and self.dropout > 0.0 and self.training:
                out = nn.functional.dropout(out, self.dropout, training=True)
            out, (h, c) = layer(out, (h0[i], c0[i]))
            h_n.append(h)
            c_n.append(c)
        h_n_t, c_n_t = torch.stack(h_n), torch.stack(c_n)
        if unbatched:
            return out.squeeze(1), (h_n_t.squeeze(1), c_n_t.squeeze(1))
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, (h_n_t, c_n_t)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        extra = self.family_repr()
        return s + (", " + extra if extra else "")

    def family_repr(self) -> str:
        """Non-default family arguments for ``extra_repr``."""
        return ""
