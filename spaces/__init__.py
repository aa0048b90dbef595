"""Parameter-efficient LSTM-family cells, each shaped like ``torch.nn.LSTM``, with exact counts.

See ``spaces/README.md`` for every family's equations and parameter formula. The family classes
other than ``LSTM`` are imported on first access, so one missing family module does not break
``import squeezelstm.spaces``.
"""

import importlib
import importlib.util

from ._base import RecurrentLayer, RecurrentStack
from .lstm import LSTM
from .registry import FAMILIES, FAMILY_ARGS, build_cell, count_flops, count_parameters, validate_family_args

_LAZY = {
    "FactorizedLSTM": "factorized",
    "GroupedLSTM": "grouped",
    "RoutedLSTM": "routed",
    "RestrictedLSTM": "restricted",
    "HiddenLayerLSTM": "hidden",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FAMILIES",
    "FAMILY_ARGS",
    "LSTM",
    "RecurrentLayer",
    "RecurrentStack",
    "build_cell",
    "count_flops",
    "count_parameters",
    "validate_family_args",
]
# Star-imports list only the family classes whose module is present.
__all__ += [name for name, mod in _LAZY.items() if importlib.util.find_spec(f"{__name__}.{mod}") is not None]
