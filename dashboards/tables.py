"""The Pareto front as rows: for the ``pareto`` command's table and JSON, and the parent run's CSV/JSON."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from squeezelstm.search.pareto import SIZES, TrialRecord
from squeezelstm.spaces.families import FAMILY_ARGS  # the family table: torch-free, so a report never imports torch

SHAPE_ARGS = ("hidden_size", "num_layers", "embedding_size")
COLUMNS = ("trial", "family", "key_args", "params", "recurrent_params", "flops", "valid_ppl", "test_ppl")
NUMERIC = {"trial", "params", "recurrent_params", "flops", "valid_ppl", "test_ppl"}


def columns(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The table's columns for ``front_rows`` output: the search's size objective first of the three sizes,
    and ``dense`` (the sizes before H-LSTM pruning) where a trial on it prunes."""
    size = SIZES[rows[0].get("size", "total")] if rows else "params"
    sizes = (size, *(c for c in ("params", "recurrent_params", "flops") if c != size))
    dense = ("dense",) if any(row.get("dense") for row in rows) else ()
    return ("trial", "family", "key_args", *sizes, *dense, "valid_ppl", "test_ppl")


def dense_text(record: TrialRecord) -> dict[str, int]:
    """The sizes before pruning that differ from the live ones (empty for a trial that does not prune)."""
    return {k: int(v) for k, v in record.dense.items() if v != getattr(record, k)}


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
    """One plain dict per trial (trial, family, key_args, params, recurrent_params, flops, valid_ppl, test_ppl,
    the search's ``size`` objective, and ``dense``: the sizes before pruning where they differ), in the given order."""
    return [
        {"trial": r.number, "family": r.family, "key_args": key_args(r), "params": int(r.params),
         "recurrent_params": int(r.recurrent_params), "flops": int(r.flops), "valid_ppl": r.valid_ppl,
         "test_ppl": r.test_ppl, "size": r.size, "dense": dense_text(r)}
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
    """``front_rows`` output as a DataFrame of cell texts (``columns(rows)``): what the CSV and the table show."""
    names = columns(rows)
    return pd.DataFrame([[cell_text(row.get(c)) for c in names] for row in rows], columns=list(names), dtype=object)


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of ``front_rows`` output (key_args as ``name=value`` pairs)."""
    return front_frame(rows).to_csv(index=False, lineterminator="\n")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned plain-text table of ``front_rows`` output, for a terminal: numbers right-aligned."""
    names = columns(rows)
    cells = pd.concat([pd.DataFrame([names], columns=list(names), dtype=object), front_frame(rows)],
                      ignore_index=True)
    widths = cells.apply(lambda column: column.str.len()).max()
    for name in names:
        pad = cells[name].str.rjust if name in NUMERIC else cells[name].str.ljust
        cells[name] = pad(int(widths[name]))
    return "\n".join(cells.agg("  ".join, axis=1).str.rstrip())
