"""A minimal TOML writer for configs: ``[section]`` tables of scalars and flat lists (``tomllib`` only reads)."""

from __future__ import annotations

import json
from typing import Any


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")  # pragma: no cover - config bug


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    # TOML has no null: keys left at None are omitted and read back as their default None.
    out = []
    for section, values in data.items():
        out.append(f"[{section}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None)
        out.append("")
    return "\n".join(out)
