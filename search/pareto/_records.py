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

from ._maths import hypervolume, pareto_mask

STATUSES = ("running", "finished", "pruned", "failed", "diverged")
OBJECTIVES = (("params", "min"), ("valid_ppl", "min"))


@dataclass
class TrialRecord:
    """One trial of a search.

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

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got status={self.status!r}")

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


def objective_matrix(records: Sequence[TrialRecord]) -> np.ndarray:
    """(n, 2) array of (params, valid_ppl), both minimised."""
    return np.array([[r.params, r.valid_ppl] for r in records], dtype=float).reshape(len(records), 2)


def pareto_front(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Non-dominated finished trials, sorted by parameter count."""
    done = finished(records)
    if not done:
        return []
    mask = pareto_mask(objective_matrix(done))
    return sorted((r for r, keep in zip(done, mask) if keep), key=lambda r: (r.params, r.valid_ppl))


def log_hypervolume(records: Iterable[TrialRecord], ref_params: float, ref_ppl: float) -> float:
    """Hypervolume of the finished trials in (log10 params, log perplexity) space.

    The reference point (``ref_params``, ``ref_ppl``) must be fixed for a whole search (for
    example the budget's ``max_params`` and the corpus's unigram or vocabulary-size perplexity)
    so that values are comparable across trials and searches.
    """
    if ref_params <= 0 or ref_ppl <= 0:
        raise ValueError(f"reference point must be positive, got ref_params={ref_params}, ref_ppl={ref_ppl}")
    done = finished(records)
    if not done:
        return 0.0
    pts = np.log(objective_matrix(done))
    pts[:, 0] /= math.log(10.0)
    return hypervolume(pts, [math.log10(ref_params), math.log(ref_ppl)])
