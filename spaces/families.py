"""The family table: every cell family's name, class and constructor arguments, as plain data.

The one place the family names are written. The cell classes (``spaces.registry``), the trainer
config, the space-file checks and the dashboards all read it. Torch-free on purpose, so that the
space-file checks and a report never load torch: ``spaces/__init__`` imports its torch-backed
modules lazily, and ``import squeezelstm.spaces.families`` loads neither torch nor numpy
(tests/spaces/test_spaces_families.py checks it in a fresh interpreter).

Each argument says how a caller may give it (``kind``, ``choices``, ``low``/``high``), its default
(None: required), whether it may be one value per layer, whether a space file may give it as a
fraction of ``hidden_size`` (``<name>_fraction``), and ``snap``: how a sampled value becomes a valid
value at given sizes (the family classes' ``check_args`` stay the authority on validity).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# How a routed cell picks its sub-cell each step (see spaces/routed.py).
ROUTINGS = ("hidden", "round_robin", "token", "soft")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def nearest_divisor(n: int, target: float) -> int:
    """The divisor of ``n`` closest to ``target`` in log ratio (ties to the smaller): always valid."""
    target = max(float(target), 1e-9)
    return min(_divisors(n), key=lambda d: (abs(math.log(d / target)), d))


# snap(value, layer input widths, hidden_size) -> a value the family accepts at these sizes
Snap = Callable[[Any, list, int], Any]


def _snap_rank(value: float, inputs: list[int], n: int) -> int:
    # every layer's (4n, m + n) gate matrix must be able to realise the rank
    return int(min(max(round(value), 1), min(min(4 * n, m + n) for m in inputs)))


def _snap_common_divisor(value: float, inputs: list[int], n: int) -> int:
    return nearest_divisor(math.gcd(n, *inputs), value)


def _snap_hidden_divisor(value: float, inputs: list[int], n: int) -> int:
    return nearest_divisor(n, value)


def _snap_positive(value: float, inputs: list[int], n: int) -> int:
    return int(max(round(value), 1))


def _snap_float(value: Any, inputs: list[int], n: int) -> float:
    return float(value)


def _snap_as_is(value: Any, inputs: list[int], n: int) -> Any:
    return value


@dataclass(frozen=True)
class FamilyArg:
    """One constructor argument of a family: ``kind`` is ``"int"`` (a positive int), ``"float"``
    (a number in ``[low, high]``) or ``"choice"`` (one of ``choices``)."""

    name: str
    kind: str
    snap: Snap
    default: Any = None
    per_layer: bool = False
    fraction: bool = False
    choices: tuple = ()
    low: float | None = None
    high: float | None = None

    @property
    def space_keys(self) -> tuple[str, ...]:
        """The keys a space file may set this argument with (exactly one of them)."""
        return (self.name, f"{self.name}_fraction") if self.fraction else (self.name,)


@dataclass(frozen=True)
class Family:
    """One cell family: its name, where its class lives in ``squeezelstm.spaces``, its arguments.

    ``stream_position``: the stack's ``forward`` also takes ``offset=`` (the stream position of the
    window) and ``generator=``; ``grows_and_prunes``: the trainer may grow and prune it;
    ``is_torch_lstm``: ``torch.nn.LSTM`` is this family (same maths, same parameters);
    ``schedule_keys``: further keys a space file may give for the family, which set its training
    schedule rather than the cell (the grow-and-prune target sparsity and phases).
    """

    name: str
    module: str
    class_name: str
    args: tuple[FamilyArg, ...] = ()
    stream_position: bool = False
    grows_and_prunes: bool = False
    is_torch_lstm: bool = False
    schedule_keys: tuple[str, ...] = ()

    @property
    def arg_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args)

    @property
    def defaults(self) -> dict[str, Any]:
        return {a.name: a.default for a in self.args if a.default is not None}


FAMILY_TABLE: Mapping[str, Family] = MappingProxyType({f.name: f for f in (
    Family("lstm", "lstm", "LSTM", is_torch_lstm=True),
    Family("factorized", "factorized", "FactorizedLSTM",
           (FamilyArg("rank", "int", _snap_rank, per_layer=True, fraction=True),)),
    Family("grouped", "grouped", "GroupedLSTM",
           (FamilyArg("groups", "int", _snap_common_divisor, per_layer=True, fraction=True),)),
    Family("routed", "routed", "RoutedLSTM",
           (FamilyArg("num_cells", "int", _snap_hidden_divisor, default=2, fraction=True),
            FamilyArg("routing", "choice", _snap_as_is, default="hidden", choices=ROUTINGS)),
           stream_position=True),
    Family("restricted", "restricted", "RestrictedLSTM",
           (FamilyArg("share", "float", _snap_float, per_layer=True, low=0, high=1),)),
    Family("hidden", "hidden", "HiddenLayerLSTM",
           (FamilyArg("gate_hidden", "int", _snap_positive, default=16, fraction=True),),
           grows_and_prunes=True, schedule_keys=("prune_sparsity", "grow_phases", "prune_phases")),
)})

FAMILY_NAMES: tuple[str, ...] = tuple(FAMILY_TABLE)
# family -> the names of its own constructor arguments
FAMILY_ARGS: Mapping[str, tuple[str, ...]] = MappingProxyType({f.name: f.arg_names for f in FAMILY_TABLE.values()})
# every family argument name, each once, in table order
FAMILY_ARG_NAMES: tuple[str, ...] = tuple(dict.fromkeys(a.name for f in FAMILY_TABLE.values() for a in f.args))
# class name -> family name (``RecurrentStack`` subclasses learn their ``family`` from it)
FAMILY_OF_CLASS: Mapping[str, str] = MappingProxyType({f.class_name: f.name for f in FAMILY_TABLE.values()})


def derive_family_args(family: str, raw: Mapping[str, Any], input_size: int, hidden_size: int, num_layers: int) -> dict:
    """Turn a family's sampled space values into valid constructor arguments for these sizes.

    ``raw`` maps space keys (``groups`` or ``groups_fraction``, ...) to sampled values; the result
    maps argument names (``groups``, ...) to values that satisfy the family's validity rules by
    construction (a fraction is taken of ``hidden_size``).
    """
    inputs = [input_size] + [hidden_size] * (num_layers - 1)
    args: dict[str, Any] = {}
    for arg in FAMILY_TABLE[family].args:
        value = raw[arg.name] if arg.name in raw else raw[f"{arg.name}_fraction"] * hidden_size
        args[arg.name] = arg.snap(value, inputs, hidden_size)
    return args


__all__ = ["FAMILY_ARGS", "FAMILY_ARG_NAMES", "FAMILY_NAMES", "FAMILY_OF_CLASS", "FAMILY_TABLE", "ROUTINGS",
           "Family", "FamilyArg", "derive_family_args", "nearest_divisor"]
