"""The multi-layer shell every cell family shares, shaped like ``torch.nn.LSTM``.

A family supplies one *layer*: a module mapping a window ``x`` of shape ``(T, N, in)`` and a state
``(h, c)`` of shapes ``(N, H)`` to ``(out, (h, c))`` with ``out`` of shape ``(T, N, H)``. The stack
handles everything ``nn.LSTM`` users expect: ``batch_first``, unbatched 2-D input, ``hx=None`` as
zeros, dropout between layers, and early shape checks with the expected and actual shapes. It also
owns the skeleton of every family's counting: ``check_args``, then one ``layer_parameters`` /
``layer_flops`` term per layer, summed over the layers' input widths.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .families import FAMILY_OF_CLASS, FAMILY_TABLE

State = tuple[Tensor, Tensor]


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1, else raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    return value


def optional_parameters(module: nn.Module, present: bool, shapes: dict[str, tuple[int, ...]], **factory_kwargs: Any) -> None:
    """Give ``module`` one uninitialised parameter per ``name: shape`` if ``present`` (``bias=True``),
    else register each name as None, as ``nn.Linear`` does for ``bias=False``."""
    for name, shape in shapes.items():
        if present:
            setattr(module, name, nn.Parameter(torch.empty(shape, **factory_kwargs)))
        else:
            module.register_parameter(name, None)


def layer_input_sizes(input_size: int, hidden_size: int, num_layers: int) -> list[int]:
    """Input width of each layer: ``input_size`` for the first, ``hidden_size`` after."""
    return [input_size] + [hidden_size] * (num_layers - 1)


def layer_args(args: dict[str, Any], num_layers: int) -> list[dict[str, Any]]:
    """Each layer's own family arguments: a per-layer tuple gives layer ``i`` its ``i``-th entry."""
    return [{k: (v[i] if isinstance(v, tuple) else v) for k, v in args.items()} for i in range(num_layers)]


class RecurrentLayer(nn.Module):
    """One recurrent layer: ``forward(x (T, N, in), (h, c) each (N, H)) -> (out (T, N, H), (h, c))``."""

    input_size: int
    hidden_size: int

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:  # pragma: no cover - interface
        raise NotImplementedError

    def recurrent_weight(self) -> tuple[str, Tensor | None]:
        """``(parameter name, 0/1 mask of the entries the recurrence reads, or None for all of it)``:
        the hidden-to-hidden weights, which weight drop (DropConnect) masks."""
        return "weight_hh", None


class RecurrentStack(nn.Module):
    """A stack of ``num_layers`` family layers with the ``torch.nn.LSTM`` interface.

    A subclass is named in the family table (``families.py``), which gives it its ``family`` name,
    and supplies four pieces: ``check_args`` (validate and normalise the family arguments; ValueError
    naming the bad one), ``layer_class`` (built with each layer's own arguments as keywords; or
    override ``make_layer(index, input_size, hidden_size, bias, factory_kwargs, **args)``), and the
    per-layer formulas ``layer_parameters(m, n, bias, **args)`` and ``layer_flops(m, n, **args)``.
    The constructor takes the family arguments as keywords and keeps each normalised one as an
    attribute (``self.rank``, ...).
    """

    family: str = ""
    layer_class: type[RecurrentLayer]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" not in cls.__dict__:
            cls.family = FAMILY_OF_CLASS.get(cls.__name__, "")

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
        **family_args: Any,
    ) -> None:
        args = self.check_args(input_size, hidden_size, num_layers, **family_args)
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got dropout={dropout!r}")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self._family_args = args
        for name, value in args.items():
            setattr(self, name, value)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.layers = nn.ModuleList(
            self.make_layer(i, m, hidden_size, self.bias, factory_kwargs, **own)
            for i, (m, own) in enumerate(zip(layer_input_sizes(input_size, hidden_size, num_layers),
                                             layer_args(args, num_layers)))
        )

    def make_layer(
        self, index: int, input_size: int, hidden_size: int, bias: bool, factory_kwargs: dict, **args: Any
    ) -> RecurrentLayer:
        """Layer ``index``: ``layer_class(input_size, hidden_size, <its family args>, bias=, device=, dtype=)``."""
        return self.layer_class(input_size, hidden_size, **args, bias=bias, **factory_kwargs)

    # -- the family's arguments and formulas -----------------------------------------------------
    @classmethod
    def check_args(cls, input_size: int, hidden_size: int, num_layers: int = 1, **family_args: Any) -> dict:
        """Validate the sizes and family arguments; return the normalised family arguments."""
        raise NotImplementedError  # pragma: no cover - interface

    @classmethod
    def with_defaults(cls, family_args: dict[str, Any]) -> dict[str, Any]:
        """``family_args`` with the family table's defaults filled in for the arguments not given."""
        return {**FAMILY_TABLE[cls.family].defaults, **family_args}

    @staticmethod
    def layer_parameters(input_size: int, hidden_size: int, bias: bool = True, **args: Any) -> int:
        """Exact parameter count of one layer with input width ``input_size`` and its own ``args``."""
        raise NotImplementedError  # pragma: no cover - interface

    @staticmethod
    def layer_flops(input_size: int, hidden_size: int, **args: Any) -> int:
        """Matmul multiply-adds of one token through one layer (element-wise maths not counted)."""
        raise NotImplementedError  # pragma: no cover - interface

    @classmethod
    def per_layer(cls, input_size: int, hidden_size: int, num_layers: int, family_args: dict) -> list[tuple[int, dict]]:
        """``check_args``, then each layer's ``(input width, own family arguments)``."""
        args = cls.check_args(input_size, hidden_size, num_layers, **family_args)
        return list(zip(layer_input_sizes(input_size, hidden_size, num_layers), layer_args(args, num_layers)))

    @classmethod
    def count_parameters(cls, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                         **family_args: Any) -> int:
        """Exact parameter count of the whole stack (equals the module's ``numel`` sum), from formulas."""
        return sum(cls.layer_parameters(m, hidden_size, bias, **own)
                   for m, own in cls.per_layer(input_size, hidden_size, num_layers, family_args))

    @classmethod
    def count_flops(cls, input_size: int, hidden_size: int, num_layers: int = 1, **family_args: Any) -> int:
        """Matmul multiply-adds of one token (one sequence) through all layers."""
        return sum(cls.layer_flops(m, hidden_size, **own)
                   for m, own in cls.per_layer(input_size, hidden_size, num_layers, family_args))

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
        """The family arguments that differ from the table's defaults, for ``extra_repr``."""
        defaults = FAMILY_TABLE[self.family].defaults if self.family in FAMILY_TABLE else {}
        return ", ".join(f"{k}={v}" for k, v in self._family_args.items() if k not in defaults or defaults[k] != v)
