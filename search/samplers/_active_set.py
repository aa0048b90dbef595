"""Which observations the size-aware sampler's Gaussian process is fitted on: a bounded, relevant active set.

Every epoch of every finished trial is an observation (``ehvi.ExactSizeEHVI``), so a search of
thousands of trials holds tens of thousands of them, and an exact GP over all of them costs
O(n^3) a fit. The active set keeps the proposal's cost bounded: at most ``max_rows`` rows, chosen
so the model stays right where the decision is made.

* While all rows fit, all are used (the sampler is then exactly the unbounded one).
* Else each trial's curve is thinned to ``per_trial`` rows (its first and last epoch and evenly
  spaced ones between): a learning curve is smooth in training progress, so a few points carry
  its shape, and the last is the value the front is built from.
* If that is still too many, whole (thinned) trials are taken in turn from three queues until the
  budget is spent: the front's neighbourhood (finished trials by their gap to the staircase of
  everything no larger, front members first), the most recent trials (the running region of the
  search, and where kriging-believer proposals are being made), and a seeded random order of the
  rest (global coverage, so the model does not forget the regions already ruled out).

Pure numpy; the sampler calls ``select_rows`` and ``front_gaps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Rows = list[tuple[float, float]]  # (training progress, log perplexity) of one trial


def curve_rows(curve: Sequence[tuple[int, float]], epochs: int) -> Rows:
    """A trial's finite, positive per-epoch perplexities as (progress ``epoch / epochs``, log perplexity)."""
    return [(epoch / epochs, math.log(ppl)) for epoch, ppl in curve
            if ppl is not None and math.isfinite(ppl) and ppl > 0]


@dataclass(frozen=True)
class TrialRows:
    """What the active set uses of one closed trial, computed once: its rows, thinned rows and final point."""

    rows: Rows
    thinned: Rows
    final: tuple[float, float] | None  # (log10 params, log final perplexity) of a finished trial, else None
    no_value: bool  # failed or diverged without one finite perplexity: stands for the worst value seen

    @classmethod
    def of(cls, o: Any, epochs: int, per_trial: int = 3) -> TrialRows:
        """From an ``ehvi.Observation`` of a closed trial."""
        rows = curve_rows(o.curve, epochs)
        final = None
        if o.status == "finished" and o.curve and math.isfinite(o.curve[-1][1]):
            final = (math.log10(o.params), math.log(o.curve[-1][1]))
        no_value = o.status in ("failed", "diverged") and not any(math.isfinite(p) for _, p in o.curve if p is not None)
        return cls(rows, thin(rows, per_trial), final, no_value)


def thin(rows: Rows, keep: int) -> Rows:
    """At most ``keep`` of ``rows``: the first, the last and evenly spaced ones between (``keep`` >= 2)."""
    if len(rows) <= keep:
        return list(rows)
    idx = np.unique(np.round(np.linspace(0, len(rows) - 1, keep)).astype(int))
    return [rows[i] for i in idx]


def front_gaps(finals: np.ndarray) -> np.ndarray:
    """For each finished trial (rows of ``finals``: log10 params, log perplexity; NaN rows for unfinished ones) how
    far its perplexity is above the best of every trial no larger (0 on the front); +inf for NaN rows. O(n log n)."""
    finals = np.asarray(finals, dtype=float).reshape(-1, 2)
    gaps = np.full(len(finals), math.inf)
    ok = np.flatnonzero(~np.isnan(finals).any(axis=1))
    if len(ok):
        order = ok[np.lexsort((finals[ok, 1], finals[ok, 0]))]
        best = np.minimum.accumulate(finals[order, 1])
        gaps[order] = finals[order, 1] - best
    return gaps


def select_rows(rows: Sequence[Rows], gaps: np.ndarray, max_rows: int | None, rng: np.random.Generator,
                per_trial: int = 3, thinned: Sequence[Rows] | None = None) -> list[tuple[int, Rows]]:
    """The active set: ``(trial index, its rows)`` for the trials used, at most ``max_rows`` rows in all.

    ``rows[i]`` are trial ``i``'s observations (trials in launch order, so a higher index is more
    recent); ``gaps[i]`` its ``front_gaps`` value (inf for trials that did not finish). ``max_rows``
    None means no bound. ``thinned`` are the rows already thinned to ``per_trial`` (computed here if None).
    Trials are returned in index order.
    """
    every = [(i, list(r)) for i, r in enumerate(rows) if r]
    if max_rows is None or sum(len(r) for _, r in every) <= max_rows:
        return every
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive integer or None, got max_rows={max_rows!r}")
    thinned = {i: (thinned[i] if thinned is not None else thin(r, per_trial)) for i, r in every}
    if sum(len(r) for r in thinned.values()) <= max_rows:
        return sorted(thinned.items())
    ids = np.asarray(sorted(thinned), dtype=int)
    g = np.asarray(gaps, dtype=float)[ids]
    order = np.argsort(g, kind="stable")
    near = ids[order][np.isfinite(g[order])]  # only finished trials are the front's neighbours
    queues = [iter(near.tolist()), iter(ids[::-1].tolist()), iter(rng.permutation(ids).tolist())]
    chosen: dict[int, Rows] = {}
    used = 0
    while queues and used < max_rows:
        for queue in list(queues):
            for i in queue:
                if i not in chosen:
                    break
            else:
                queues.remove(queue)
                continue
            r = thinned[i]
            if used + len(r) > max_rows:
                r = r[-(max_rows - used):]  # the budget's last rows: this trial's latest epochs
            chosen[i] = r
            used += len(r)
            if used >= max_rows:
                break
    return sorted(chosen.items())


__all__ = ["TrialRows", "curve_rows", "front_gaps", "select_rows", "thin"]
