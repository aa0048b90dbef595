"""Checkpoints as plain containers of tensors, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds the config as a plain dict, the model and optimizer ``state_dict``s, the
schedule state, the dropout generator's state (a uint8 tensor), the epoch reached, the per-epoch
history and the elapsed time: everything ``train`` needs to continue to the same numbers.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any

import torch

from .files import atomic_write

FORMAT = "squeezelstm-checkpoint"
VERSION = 1
FILENAME = "checkpoint.pt"


def checkpoint_path(directory: str | os.PathLike) -> pathlib.Path:
    """Where ``train`` keeps the checkpoint of a run in ``directory``."""
    return pathlib.Path(directory) / FILENAME


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format marker) atomically: a temporary file, then a rename."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, lambda tmp: torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); anything else -> ValueError naming the path."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        with warnings.catch_warnings():
            # a foreign pickle makes torch warn about its protocol before refusing it: one error line is enough
            warnings.simplefilter("ignore")
            data = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt bytes reach the unpickler's internals (IndexError,
        # TypeError, UnicodeDecodeError, struct.error, ...): every one means "not a checkpoint" here
        raise ValueError(f"{p} is not a readable squeezelstm checkpoint ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{p} is not a squeezelstm checkpoint")
    if data.get("version") != VERSION:
        raise ValueError(f"{p} has checkpoint version {data.get('version')!r}, this code reads {VERSION}")
    for key in ("config", "model", "optimizer", "schedule", "rng", "epoch", "history"):
        if key not in data:
            raise ValueError(f"{p} is not a complete squeezelstm checkpoint (no {key!r})")
    return data
