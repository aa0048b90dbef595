"""The family registry: one name per cell family, dispatching to the classes that own their formulas.

Every family class is a ``RecurrentStack`` subclass with the classmethods ``check_args``,
``count_parameters`` and ``count_flops``; this module only maps a family name to its class and
checks that the caller passed the family's own arguments (both read from the table in
``families.py``). Classes are imported lazily, so a family module that is missing or broken does
not stop the others from being built.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

from .families import FAMILY_ARGS, FAMILY_TABLE

# name -> (module inside squeezelstm.spaces, class name)
_LOCATIONS: dict[str, tuple[str, str]] = {f.name: (f.module, f.class_name) for f in FAMILY_TABLE.values()}


class _FamilyTable(Mapping):
    """A read-only ``{family name: class}`` mapping that imports each family module on first use."""

    def __init__(self, locations: dict[str, tuple[str, str]]) -> None:
        self._locations = locations
        self._cache: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        if name not in self._locations:
            raise KeyError(name)
        if name not in self._cache:
            module_name, class_name = self._locations[name]
            module = importlib.import_module(f"{__package__}.{module_name}")
            self._cache[name] = getattr(module, class_name)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._locations)

    def __len__(self) -> int:
        return len(self._locations)

    def __repr__(self) -> str:
        return f"FAMILIES({', '.join(self._locations)})"


FAMILIES: Mapping[str, type] = _FamilyTable(_LOCATIONS)


def family_class(cell: str) -> type:
    """Return the class of family ``cell``; ValueError listing the known families if there is none."""
    if not isinstance(cell, str) or cell not in _LOCATIONS:
        raise ValueError(f"unknown cell family cell={cell!r}; known families: {', '.join(_LOCATIONS)}")
    return FAMILIES[cell]


def _check_names(cell: str, family_args: dict[str, Any]) -> None:
    allowed = FAMILY_ARGS[cell]
    for name in family_args:
        if name not in allowed:
            takes = ", ".join(allowed) if allowed else "no family arguments"
            raise ValueError(f"cell family {cell!r} does not take argument {name}={family_args[name]!r} (it takes {takes})")


def validate_family_args(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **family_args: Any) -> dict:
    """Check ``family_args`` for family ``cell`` at these sizes; return the normalised arguments.

    Raises ValueError for an unknown family, an argument the family does not take, or a bad value.
    """
    cls = family_class(cell)
    _check_names(cell, family_args)
    return cls.check_args(input_size, hidden_size, num_layers, **family_args)


def build_cell(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bias: bool = True,
    batch_first: bool = False,
    dropout: float = 0.0,
    device: Any = None,
    dtype: Any = None,
    **family_args: Any,
) -> nn.Module:
    """Build a stack of family ``cell`` with the ``torch.nn.LSTM`` interface; returns the module."""
    cls = family_class(cell)
    _check_names(cell, family_args)
    return cls(input_size, hidden_size, num_layers, bias, batch_first, dropout, device, dtype, **family_args)


def count_parameters(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True, **family_args: Any) -> int:
    """Exact number of parameters of ``build_cell(cell, ...)``, computed from formulas (no tensors)."""
    cls = family_class(cell)
    _check_names(cell, family_args)
    return int(cls.count_parameters(input_size, hidden_size, num_layers, bias, **family_args))


def count_flops(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **family_args: Any) -> int:
    """Matmul multiply-adds of one time step of one sequence through all layers of family ``cell``."""
    cls = family_class(cell)
    _check_names(cell, family_args)
    return int(cls.count_flops(input_size, hidden_size, num_layers, **family_args))
