"""Writing results safely: JSON without non-finite floats, and files replaced atomically."""

from __future__ import annotations

import math
import os
import pathlib
import uuid
from collections.abc import Callable
from typing import Any


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps`` writes as strict JSON: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write(path: str | os.PathLike, write: Callable[[pathlib.Path], Any]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``.

    A reader (or a process killed mid-write) sees the old file or the new one, never half of one.
    The temporary name is unique, so concurrent writers of the same file do not clobber each other's.
    """
    p = pathlib.Path(path)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


__all__ = ["atomic_write", "atomic_write_text", "json_safe"]
