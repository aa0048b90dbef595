"""The Pareto front as rows: for the ``pareto`` command's table and JSON, and the parent run's CSV/JSON."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from squeezelstm.search.pareto import SIZES, Refinement, TrialRecord
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


# ---------------------------------------------------------------- a refinement (members trained again with seeds)
def refined_rows(refinement: Refinement) -> list[dict[str, Any]]:
    """One plain dict per member of a refinement, sorted by size: its search trial (``member``), family, the three
    sizes (the search's, exact) and the objective's name (``size``), validation and test perplexity over the
    finished seeds (``*_mean``, ``*_std``, ``*_min``, ``*_max``), ``seeds`` finished of ``seeds_total``, the
    search's own ``search_valid_ppl`` (after ``search_epochs``) and ``on_front`` (the refined front)."""
    front = {m.number for m in refinement.front()}
    rows = []
    for m in sorted(refinement.members, key=lambda m: (m.size_value, m.number)):
        row = {"member": m.number, "family": m.family, "key_args": format_args(key_args(m)), "size": m.size,
               "params": m.params, "recurrent_params": m.recurrent_params, "flops": m.flops}
        for name, value in (("valid", m.valid), ("test", m.test)):
            for stat in ("mean", "std", "min", "max"):
                row[f"{name}_{stat}"] = getattr(value, stat) if value is not None else None
        row.update({"seeds": m.seeds_finished, "seeds_total": len(m.runs), "search_valid_ppl": m.search_valid_ppl,
                    "search_epochs": m.search_epochs, "on_front": m.number in front})
        rows.append(row)
    return rows


def format_refined_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned plain-text table of ``refined_rows``: member, family, the search's size objective, validation and
    test perplexity as mean +- std (and the validation range), seeds finished, the search's perplexity, front."""
    if not rows:
        return "(no member)"
    size = SIZES[rows[0]["size"]]
    head = ("member", "family", size, "valid ppl (mean +- std)", "valid min-max", "test ppl (mean +- std)", "seeds",
            "search valid ppl", "front")
    body = []
    for r in rows:
        valid = "" if r["valid_mean"] is None else f"{r['valid_mean']:.2f} +- {r['valid_std']:.2f}"
        test = "" if r["test_mean"] is None else f"{r['test_mean']:.2f} +- {r['test_std']:.2f}"
        span = "" if r["valid_min"] is None else f"{r['valid_min']:.2f}-{r['valid_max']:.2f}"
        search = "" if r["search_valid_ppl"] is None else f"{r['search_valid_ppl']:.2f} ({r['search_epochs']} ep)"
        body.append((str(r["member"]), r["family"], f"{r[size]:,}", valid, span, test,
                     f"{r['seeds']}/{r['seeds_total']}", search, "*" if r["on_front"] else ""))
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    left = {1}  # the family is text; the rest are numbers
    lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in [head, *body]]
    return "\n".join(lines)
