"""Recorded learning curves: the table a replayed search trains from (``benchmarks/record_curves.py``).

A table of recorded curves (every epoch's validation perplexity and time for a few hundred random
configurations of a space) stands in for training in a replayed search (``_replay_loop``). A suggested
configuration is mapped to the nearest recorded one of the same family (distance over the normalised
sampled values and log parameter count); the table's own front is the best any search over it can reach.

Core module: imports numpy, pandas and the standard library; no Ray.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..pareto import log_hypervolume_of, pareto_mask

COSTS = ("epochs", "seconds")
# the columns ``CurveTable.from_rows`` reads (``benchmarks/record_curves.py`` also writes train_ppl)
TABLE_COLUMNS = ("index", "family", "sampled", "params", "flops", "epoch", "valid_ppl", "epoch_s", "status")


@dataclass(frozen=True)
class Curve:
    """One recorded configuration: its sampled values, exact size and per-epoch validation perplexity and seconds."""

    index: int
    family: str
    sampled: dict
    params: int
    flops: int
    valid: tuple
    epoch_s: tuple
    status: str

    def final(self, epochs: int) -> float | None:
        """Validation perplexity after ``epochs`` epochs, or None if the run ended (diverged, failed) before."""
        if len(self.valid) < epochs:
            return None
        value = self.valid[epochs - 1]
        return float(value) if value is not None and math.isfinite(value) else None


class CurveTable:
    """The recorded curves of one space, with a nearest-configuration lookup."""

    def __init__(self, curves: Sequence[Curve]) -> None:
        if not curves:
            raise ValueError("a curve table needs at least one recorded curve, got none")
        self.curves = list(curves)
        self.by_family: dict[str, list[Curve]] = {}
        for c in self.curves:
            self.by_family.setdefault(c.family, []).append(c)
        self._features: dict[str, tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = {}
        for family, group in self.by_family.items():
            self._features[family] = self._fit(group)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> CurveTable:
        """Build from CSV-shaped rows (``record_curves.COLUMNS``; values may be strings)."""
        grouped: dict[int, list[dict]] = {}
        for row in rows:
            grouped.setdefault(int(row["index"]), []).append(row)
        curves = []
        for index, group in sorted(grouped.items()):
            group.sort(key=lambda r: int(r["epoch"]))
            first = group[0]
            sampled = first["sampled"] if isinstance(first["sampled"], dict) else json.loads(first["sampled"])
            valid = tuple(_float(r["valid_ppl"]) for r in group if int(r["epoch"]) >= 1 and _float(r["valid_ppl"]) is not None)
            seconds = tuple(_float(r["epoch_s"]) or 0.0 for r in group if int(r["epoch"]) >= 1)[: len(valid)]
            curves.append(Curve(index=index, family=str(first["family"]), sampled=sampled, params=int(first["params"]),
                                flops=int(first["flops"]), valid=valid, epoch_s=seconds, status=str(first["status"])))
        return cls(curves)

    @classmethod
    def from_csv(cls, path: str | Path) -> CurveTable:
        """Read a table written by ``benchmarks/record_curves.py`` (plain or ``.gz`` CSV)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no curve table at {path}")
        try:  # every field as the text the file holds ("" where empty), as from_rows expects
            table = pd.read_csv(path, dtype=str, keep_default_na=False, compression="infer")
        except (ValueError, OSError, EOFError) as exc:  # not a CSV, a broken gzip, no header at all
            raise ValueError(f"curve table {path} is unreadable: {' '.join(str(exc).split())[:200]}") from None
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"curve table {path} lacks the column(s) {', '.join(missing)} "
                             f"(a table of benchmarks/record_curves.py has {', '.join(TABLE_COLUMNS)})")
        if table.empty:
            raise ValueError(f"curve table {path} holds no recorded curve (a header and no rows)")
        try:
            return cls.from_rows(table.to_dict("records"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"curve table {path} has a bad value: {' '.join(str(exc).split())[:200]}") from None

    # -- lookup ---------------------------------------------------------------------------------

    @staticmethod
    def _vector(sampled: dict, params: int, keys: list[str]) -> list[float]:
        out = [math.log(max(params, 1))]
        for key in keys:
            value = sampled.get(key)
            out.append(_encode(key, value))
        return out

    def _fit(self, group: list[Curve]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        keys = sorted({k for c in group for k, v in c.sampled.items() if k != "model.cell" and _numeric(v)})
        cats = sorted({k for c in group for k, v in c.sampled.items() if k != "model.cell" and not _numeric(v)})
        x = np.array([self._vector(c.sampled, c.params, keys) for c in group], dtype=float)
        lo, hi = np.nanmin(x, axis=0), np.nanmax(x, axis=0)
        scale = np.where(hi > lo, hi - lo, 1.0)
        return keys + [f"cat:{k}" for k in cats], x, lo, scale

    def nearest(self, family: str, sampled: dict, params: int, exclude: set | frozenset = frozenset()) -> Curve:
        """The recorded curve of ``family`` closest to (``sampled``, ``params``).

        Distance: Euclidean over the numeric sampled values and log parameter count, each scaled to
        [0, 1] by the family's recorded range (log scale for learning rates and sizes), plus 1 for
        every categorical value (e.g. routing) that differs. Family is matched exactly. Curves whose
        index is in ``exclude`` are skipped unless that leaves none of the family.
        """
        group = self.by_family.get(family)
        if not group:
            raise ValueError(f"no recorded curve of family={family!r} (recorded: {', '.join(sorted(self.by_family))})")
        names, x, lo, scale = self._features[family]
        keys = [k for k in names if not k.startswith("cat:")]
        cats = [k[4:] for k in names if k.startswith("cat:")]
        v = (np.array(self._vector(sampled, params, keys), dtype=float) - lo) / scale
        z = (x - lo) / scale
        d = np.nansum((z - v) ** 2, axis=1)
        for key in cats:
            d += np.array([0.0 if c.sampled.get(key) == sampled.get(key) else 1.0 for c in group])
        if exclude:
            taken = np.array([c.index in exclude for c in group])
            if not taken.all():
                d = np.where(taken, np.inf, d)
        return group[int(np.argmin(d))]

    # -- the truth ------------------------------------------------------------------------------

    def points(self, epochs: int) -> list[tuple[Curve, float]]:
        """(curve, final perplexity) of every curve that reached ``epochs`` epochs."""
        return [(c, c.final(epochs)) for c in self.curves if c.final(epochs) is not None]

    def true_front(self, epochs: int) -> list[Curve]:
        """The Pareto front (params, perplexity after ``epochs``) of the whole table, by parameter count."""
        pts = self.points(epochs)
        if not pts:
            return []
        mask = pareto_mask(np.array([[c.params, v] for c, v in pts], dtype=float))
        return sorted((c for (c, _), m in zip(pts, mask) if m), key=lambda c: c.params)

    def best_hypervolume(self, epochs: int, ref: tuple[float, float]) -> float:
        """Hypervolume of the whole table's front: the best any search over this table can reach."""
        return log_hypervolume_of([(c.params, v) for c, v in self.points(epochs)], ref)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_LOG_KEYS = ("train.lr", "model.hidden_size", "model.embedding_size", "model.rank", "model.groups",
             "model.num_cells", "model.gate_hidden")


def _encode(key: str, value: Any) -> float:
    if not _numeric(value):
        return math.nan
    if key in _LOG_KEYS and value > 0:
        return math.log(float(value))
    return float(value)


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


__all__ = ["COSTS", "TABLE_COLUMNS", "Curve", "CurveTable"]
