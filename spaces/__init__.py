"""Parameter-efficient LSTM-family cells, each shaped like ``torch.nn.LSTM``, with exact counts.

See ``spaces/README.md`` for every family's equations and parameter formula, and ``families.py``
for the family table. Everything here is imported on first access, so ``import
squeezelstm.spaces.families`` loads no torch, and one missing family module does not break the others.
"""

import importlib
import importlib.util

from .families import FAMILY_ARGS, FAMILY_TABLE

# name -> the module inside this package that defines it
_LAZY = {
    "RecurrentLayer": "_base",
    "RecurrentStack": "_base",
    "FAMILIES": "registry",
    "build_cell": "registry",
    "count_flops": "registry",
    "count_parameters": "registry",
    "validate_family_args": "registry",
}
_LAZY.update({f.class_name: f.module for f in FAMILY_TABLE.values()})


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Star-imports list only the family classes whose module is present.
__all__ = ["FAMILY_ARGS"] + [name for name, mod in _LAZY.items() if importlib.util.find_spec(f"{__name__}.{mod}") is not None]
