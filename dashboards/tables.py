"""The Pareto front as rows: for the ``pareto`` command's table and JSON, and the parent run's CSV/JSON."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from squeezelstm.search.pareto import TrialRecord
from squeezelstm.spaces.families import FAMILY_ARGS  # the family table: torch-free, so a report never imports torch

SHAPE_ARGS = ("hidden_size", "num_layers", "embedding_size")
COLUMNS = ("trial", "family", "key_args", "params", "valid_ppl", "test_ppl")


def key_args(record: TrialRecord) -> dict[str, Any]:
    """The arguments that tell a trial's model apart: its shape and its family's own arguments."""
    model = record.config.get("model", {}) if isinstance(record.config, dict) else {}
    sampled = {k.split(".", 1)[-1]: v for k, v in record.sampled.items()}
    names = SHAPE_ARGS + FAMILY_ARGS.get(record.family, tuple(k for k in sampled if k not in SHAPE_ARGS + ("cell",)))
    out = {}
    for name in names:
        value = model.get(name, sampled.get(name))
        if value is not None:
            out[name] = value
    return out


def format_args(args: dict[str, Any]) -> str:
    """``{"hidden_size": 256, "rank": 16}`` -> ``"hidden_size=256 rank=16"``."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in args.items())


def front_rows(front: Iterable[TrialRecord]) -> list[dict[str, Any]]:
    """One plain dict per trial (trial, family, key_args, params, valid_ppl, test_ppl), in the given order."""
    return [
        {"trial": r.number, "family": r.family, "key_args": key_args(r), "params": int(r.params),
         "valid_ppl": r.valid_ppl, "test_ppl": r.test_ppl}
        for r in front
    ]


def cell_text(value: Any) -> str:
    """A table cell's text: floats to 3 decimals, key arguments as ``name=value`` pairs, None empty."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return format_args(value)
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    return str(value)


def front_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """``front_rows`` output as a DataFrame of cell texts (columns ``COLUMNS``): what the CSV and the table show."""
    return pd.DataFrame([[cell_text(row.get(c)) for c in COLUMNS] for row in rows], columns=list(COLUMNS), dtype=object)


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of ``front_rows`` output (key_args as ``name=value`` pairs)."""
    return front_frame(rows).to_csv(index=False, lineterminator="\n")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned plain-text table of ``front_rows`` output, for a terminal: numbers right-aligned."""
    cells = pd.concat([pd.DataFrame([COLUMNS], columns=list(COLUMNS), dtype=object), front_frame(rows)],
                      ignore_index=True)
    widths = cells.apply(lambda column: column.str.len()).max()
    numeric = {"trial", "params", "valid_ppl", "test_ppl"}
    for name in COLUMNS:
        pad = cells[name].str.rjust if name in numeric else cells[name].str.ljust
        cells[name] = pad(int(widths[name]))
    return "\n".join(cells.agg("  ".join, axis=1).str.rstrip())
