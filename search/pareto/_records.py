"""What a search knows about each trial, and the Pareto front of parameter count versus perplexity.

``TrialRecord`` is the one schema shared by the search controller, the MLflow adapter and the
dashboards. Only ``finished`` trials are ever on a front: a pruned trial's perplexity is
half-trained and never final.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._maths import hypervolume, pareto_mask, to_minimization

STATUSES = ("running", "finished", "pruned", "failed", "diverged")
# The size objectives a search may minimise (``size:`` in a space file, ``--size`` on the command line):
# the name a user gives -> the TrialRecord attribute that holds it. Every trial records all three,
# exact before training (``trainers.model_sizes``; live counts after H-LSTM grow-and-prune).
SIZES: dict[str, str] = {"total": "params", "recurrent": "recurrent_params", "flops": "flops"}
SIZE_LABELS: dict[str, str] = {"total": "parameters", "recurrent": "recurrent parameters", "flops": "FLOPs per token"}
DEFAULT_SIZE = "total"


def check_size(size: object) -> str:
    """``size`` if it names a size objective; ValueError naming it otherwise."""
    if size not in SIZES:
        raise ValueError(f"unknown size={size!r}; valid sizes: {', '.join(SIZES)}")
    return str(size)


# What a search optimises, as data: (TrialRecord attribute, "min" | "max"), the size objective first.
# The objective matrix, the front, the controller's study, the trackers and the knee point read it
# through ``objectives(size)``, which puts the search's chosen size in the first slot. The
# hypervolume's axes (log10 of the first, log of the second) and the EHVI sampler, which knows the
# first exactly, are specific to (size, perplexity).
OBJECTIVES: tuple[tuple[str, str], ...] = (("params", "min"), ("valid_ppl", "min"))


def objectives(size: str = DEFAULT_SIZE) -> tuple[tuple[str, str], ...]:
    """``OBJECTIVES`` with the size objective ``size`` (total, recurrent or flops) in its first slot."""
    (_, direction), *rest = OBJECTIVES
    return ((SIZES[check_size(size)], direction), *rest)


@dataclass
class TrialRecord:
    """One trial of a search.

    ``params``, ``recurrent_params`` and ``flops`` are the model's total parameters, the cells'
    parameters and the multiply-adds per token, live after H-LSTM grow-and-prune (``dense`` keeps the
    counts before pruning, where a trial prunes); ``size`` names the one the search minimises.
    ``config`` is the full trainer config (nested dict with ``data``/``model``/``train``) that
    rebuilds the model; ``sampled`` holds only the searched arguments (flat ``model.rank``-style
    keys). ``valid_ppl`` is the final validation perplexity for a finished trial, the last one
    seen otherwise. ``history`` has one dict per epoch with at least ``epoch`` and ``valid_ppl``
    (and ``train_ppl``, ``tokens_per_s``, ``lr``, ``elapsed_s`` where known).
    """

    number: int
    family: str
    params: int
    flops: int = 0
    status: str = "running"
    valid_ppl: float | None = None
    test_ppl: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    sampled: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None
    recurrent_params: int = 0
    size: str = DEFAULT_SIZE
    dense: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got status={self.status!r}")
        check_size(self.size)

    @property
    def size_value(self) -> int:
        """The value of the search's size objective (``size``: total, recurrent or flops) for this trial."""
        return getattr(self, SIZES[self.size])

    @property
    def epochs(self) -> int:
        """Epochs actually trained."""
        return len(self.history)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        return cls(**data)


def finished(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The finished trials with a usable perplexity: the only ones a front may contain."""
    return [
        r for r in records
        if r.status == "finished" and r.valid_ppl is not None and math.isfinite(r.valid_ppl)
    ]


def status_counts(records: Iterable[TrialRecord]) -> dict[str, int]:
    """Number of trials per status, in the order the statuses first appear (only those that do)."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def size_text(record: TrialRecord) -> str:
    """``1,234 params, 567 recurrent, 890 flops``: every size of the record, the search's objective first."""
    sizes = {"total": f"{record.params:,} params", "recurrent": f"{record.recurrent_params:,} recurrent",
             "flops": f"{record.flops:,} flops"}
    return ", ".join([sizes.pop(record.size), *sizes.values()])


def objective_values(record: TrialRecord) -> tuple:
    """The record's value of each objective, in ``objectives(record.size)`` order."""
    return tuple(getattr(record, metric) for metric, _ in objectives(record.size))


def objective_matrix(records: Sequence[TrialRecord]) -> np.ndarray:
    """(n, m) array of the objectives' values (``objectives``), as they are (see ``to_minimization``)."""
    return np.array([objective_values(r) for r in records], dtype=float).reshape(len(records), len(OBJECTIVES))


def pareto_front(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Non-dominated finished trials, sorted by the first objective (then the next)."""
    done = finished(records)
    if not done:
        return []
    mask = pareto_mask(to_minimization(objective_matrix(done), objectives(done[0].size)))
    return sorted((r for r, keep in zip(done, mask) if keep), key=objective_values)


def log_hypervolume(records: Iterable[TrialRecord], ref_params: float, ref_ppl: float) -> float:
    """Hypervolume of the finished trials in (log10 params, log perplexity) space.

    The reference point (``ref_params``, ``ref_ppl``) must be fixed for a whole search (for
    example the budget's ``max_params`` and the corpus's unigram or vocabulary-size perplexity)
    so that values are comparable across trials and searches.
    """
    if ref_params <= 0 or ref_ppl <= 0:
        raise ValueError(f"reference point must be positive, got ref_params={ref_params}, ref_ppl={ref_ppl}")
    return log_hypervolume_of(objective_matrix(finished(records)), (ref_params, ref_ppl))


def log_hypervolume_of(points: Iterable[Sequence[float]], ref: Sequence[float]) -> float:
    """Hypervolume of (params, perplexity) points in (log10 params, log perplexity) against ``ref``
    (params, perplexity); points not below the reference in both, or not finite, count nothing."""
    pts = [(p, v) for p, v in points if v is not None and math.isfinite(v) and p < ref[0] and v < ref[1]]
    if not pts:
        return 0.0
    arr = np.array(pts, dtype=float)
    arr = np.column_stack([np.log10(arr[:, 0]), np.log(arr[:, 1])])
    return float(hypervolume(arr, [math.log10(ref[0]), math.log(ref[1])]))
