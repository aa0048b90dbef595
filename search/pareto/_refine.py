"""A refinement of a search: its front members trained again at a full budget with several seeds each.

A front found at 4 or 13 epochs is an estimate; the refined front is what a paper would print: per
member the mean and spread (sample std, min, max) of validation and test perplexity over seeds. The
members keep the sizes the search recorded (exact, all three); only the training (epochs, seed, the
``train.*`` settings the refinement overrides) changes. Pure data and numpy: the Ray and MLflow sides
(``backends``, ``tracking``) fill it in, ``refined.json`` and the dashboards read it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._maths import non_dominated_sort, pareto_mask, to_minimization
from ._records import SIZES, TrialRecord, check_size, finished, objective_matrix, objectives

REFINED_FILE = "refined.json"
MIN_SEEDS = 2  # a spread needs two runs at least
# ``--set`` keys a refinement may change: the training, not the model (the sizes stay the search's) nor the corpus
# (its vocabulary sizes the embedding), except where the corpus now lives
REFINE_OVERRIDABLE = ("train.", "data.path")
_ENDED = ("finished", "pruned", "failed", "diverged")


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (``ddof=1``; 0 for one value), min and max of ``n`` finite values."""

    mean: float
    std: float
    min: float
    max: float
    n: int


def spread(values: Iterable[float | None]) -> Spread | None:
    """The ``Spread`` of the finite ``values`` (None and non-finite ones are left out); None when none is left."""
    vals = np.array([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=float)
    if vals.size == 0:
        return None
    std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
    return Spread(float(vals.mean()), std, float(vals.min()), float(vals.max()), int(vals.size))


def check_seeds(seeds: object) -> int:
    """``seeds`` if it is an int >= ``MIN_SEEDS``; ValueError saying why otherwise."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < MIN_SEEDS:
        raise ValueError(f"--seeds must be an integer >= {MIN_SEEDS}, got {seeds!r}: the spread (std) of a "
                         f"member's perplexity needs at least {MIN_SEEDS} seeds")
    return seeds


def choose_members(records: Iterable[TrialRecord], top: int | None = None) -> list[TrialRecord]:
    """The trials a refinement trains again: the Pareto front (``top`` None), or the ``top`` first finished trials
    in non-dominated order (the front, then the front of the rest, ...; by validation perplexity within a rank).

    A configuration the search trained twice counts once (its better trial). Sorted by the size objective.
    ValueError when the search has no finished trial, or ``top`` < 1.
    """
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"--top must be an integer >= 1, got {top!r}")
    done = sorted(finished(records), key=lambda r: (r.valid_ppl, r.number))
    unique: dict[str, TrialRecord] = {}
    for r in done:
        unique.setdefault(_config_key(r.config, r.number), r)
    done = list(unique.values())
    if not done:
        raise ValueError("the search has no finished trial, so there is no front to refine")
    ranks = non_dominated_sort(to_minimization(objective_matrix(done), objectives(done[0].size)))
    if top is None:
        chosen = [done[i] for i in ranks[0]]
    else:
        order = [done[i] for rank in ranks for i in sorted(rank, key=lambda i: (done[i].valid_ppl, done[i].number))]
        chosen = order[:top]
    return sorted(chosen, key=lambda r: (r.size_value, r.valid_ppl, r.number))


def _config_key(config: dict, number: int) -> str:
    return json.dumps(config, sort_keys=True, default=str) if config else f"trial-{number}"


def check_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` (dotted ``section.key`` -> value) if every key is one a refinement may change."""
    for key in overrides:
        if key == "train.seed":
            raise ValueError("--set train.seed is not allowed: --seeds chooses the seeds of a refinement")
        if key == "train.prune_sparsity":
            raise ValueError("--set train.prune_sparsity is not allowed: it sets an H-LSTM's live size, which a "
                             "refinement keeps as the search recorded it")
        if not any(key == p or (p.endswith(".") and key.startswith(p) and len(key) > len(p)) for p in REFINE_OVERRIDABLE):
            raise ValueError(f"--set {key} is not allowed: a refinement keeps each member's model and corpus "
                             "(its sizes are the search's); only train.* keys and data.path may change")
    return dict(overrides)


def refine_config(config: dict[str, Any], *, epochs: int | None, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """A member's trainer config (nested dict) for one seed: ``train.epochs`` (None keeps the search's),
    ``train.seed``, then the ``overrides``. The model and corpus sections are the search's."""
    out = copy.deepcopy(config)
    train = out.setdefault("train", {})
    if epochs is not None:
        train["epochs"] = int(epochs)
    train["seed"] = int(seed)
    for key, value in check_overrides(overrides).items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


@dataclass
class SeedRun:
    """One (member, seed) training run of a refinement; ``status`` is ``pending`` until it ends."""

    seed: int
    status: str = "pending"
    valid_ppl: float | None = None
    test_ppl: float | None = None
    epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float | None = None

    @property
    def ended(self) -> bool:
        return self.status in _ENDED


@dataclass
class RefinedMember:
    """A search trial trained again with several seeds: the search's sizes and config, and one ``SeedRun`` a seed.

    ``number`` is the search's trial number; ``size`` the search's size objective; ``params``,
    ``recurrent_params``, ``flops`` (and ``dense``) the record's exact sizes, unchanged.
    """

    number: int
    family: str
    size: str
    params: int
    recurrent_params: int
    flops: int
    config: dict[str, Any]
    sampled: dict[str, Any] = field(default_factory=dict)
    dense: dict[str, int] = field(default_factory=dict)
    search_valid_ppl: float | None = None
    search_epochs: int = 0
    runs: list[SeedRun] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_size(self.size)

    @classmethod
    def of(cls, record: TrialRecord, seeds: Sequence[int]) -> RefinedMember:
        """The member for ``record``, with a pending run for each of ``seeds``."""
        return cls(number=record.number, family=record.family, size=record.size, params=int(record.params),
                   recurrent_params=int(record.recurrent_params), flops=int(record.flops), config=record.config,
                   sampled=dict(record.sampled), dense=dict(record.dense), search_valid_ppl=record.valid_ppl,
                   search_epochs=record.epochs, runs=[SeedRun(int(s)) for s in seeds])

    @property
    def size_value(self) -> int:
        return int(getattr(self, SIZES[self.size]))

    def run(self, seed: int) -> SeedRun:
        for r in self.runs:
            if r.seed == seed:
                return r
        raise KeyError(f"member {self.number} has no seed {seed}")

    @property
    def valid(self) -> Spread | None:
        """Validation perplexity over the seeds that finished."""
        return spread(r.valid_ppl for r in self.runs if r.status == "finished")

    @property
    def test(self) -> Spread | None:
        """Test perplexity over the seeds that finished."""
        return spread(r.test_ppl for r in self.runs if r.status == "finished")

    @property
    def seeds_finished(self) -> int:
        return sum(r.status == "finished" for r in self.runs)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["valid"] = asdict(self.valid) if self.valid else None
        out["test"] = asdict(self.test) if self.test else None
        out["seeds_finished"] = self.seeds_finished
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefinedMember:
        data = {k: v for k, v in data.items() if k not in ("valid", "test", "seeds_finished")}
        data["runs"] = [SeedRun(**r) for r in data.get("runs", [])]
        return cls(**data)


def refined_front(members: Iterable[RefinedMember]) -> list[RefinedMember]:
    """The members with at least ``MIN_SEEDS`` finished seeds that no other such member dominates in
    (size objective, mean validation perplexity); sorted by size."""
    ready = [m for m in members if m.seeds_finished >= MIN_SEEDS and m.valid is not None]
    if not ready:
        return []
    points = np.array([[m.size_value, m.valid.mean] for m in ready], dtype=float)
    mask = pareto_mask(points)  # both minimised
    return sorted((m for m, keep in zip(ready, mask) if keep), key=lambda m: (m.size_value, m.valid.mean))


@dataclass
class Refinement:
    """What ``refined.json`` holds: the settings of a refinement and its members' seed runs.

    ``selection`` is ``"front"`` or ``"top N"``; ``seeds`` the seeds per member; ``epochs`` None trains each member for its search epochs;
    ``overrides`` are the ``--set`` keys applied to every member's config; ``search_run_id`` is the search's
    MLflow parent run (None without tracking), ``run_id`` the refinement's own.
    """

    experiment: str
    selection: str
    epochs: int | None
    seeds: int
    overrides: dict[str, Any] = field(default_factory=dict)
    members: list[RefinedMember] = field(default_factory=list)
    search_run_id: str | None = None
    run_id: str | None = None

    def member(self, number: int) -> RefinedMember:
        for m in self.members:
            if m.number == number:
                return m
        raise KeyError(f"trial {number} is not a member of this refinement")

    def pending(self) -> list[tuple[RefinedMember, SeedRun]]:
        """The (member, seed run) pairs not ended yet, in member then seed order."""
        return [(m, r) for m in self.members for r in m.runs if not r.ended]

    def front(self) -> list[RefinedMember]:
        return refined_front(self.members)

    def add_seeds(self, seeds: int) -> None:
        """Grow every member to ``seeds`` seed runs (the new ones pending, counted on from its first seed);
        ValueError for fewer seeds than it has."""
        check_seeds(seeds)
        if seeds < self.seeds:
            raise ValueError(f"--seeds {seeds} is fewer than the {self.seeds} this refinement already has")
        for m in self.members:
            base = m.runs[0].seed if m.runs else 0
            m.runs += [SeedRun(base + i) for i in range(len(m.runs), seeds)]
        self.seeds = seeds

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.members:
            for r in m.runs:
                out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        front = {m.number for m in self.front()}
        members = [{**m.to_dict(), "on_front": m.number in front} for m in self.members]
        return {"experiment": self.experiment, "selection": self.selection, "epochs": self.epochs,
                "seeds": int(self.seeds), "overrides": dict(self.overrides), "search_run_id": self.search_run_id,
                "run_id": self.run_id, "members": members}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Refinement:
        members = [RefinedMember.from_dict({k: v for k, v in m.items() if k != "on_front"})
                   for m in data.get("members", [])]
        return cls(experiment=data["experiment"], selection=data["selection"], epochs=data.get("epochs"),
                   seeds=int(data["seeds"]), overrides=dict(data.get("overrides") or {}),
                   members=members, search_run_id=data.get("search_run_id"), run_id=data.get("run_id"))


def new_refinement(experiment: str, records: Iterable[TrialRecord], *, seeds: int, epochs: int | None = None,
                   top: int | None = None, overrides: dict[str, Any] | None = None) -> Refinement:
    """A refinement of the search's ``records``: its members (``choose_members``), each with ``seeds`` seeds
    counted up from the seed the search trained it with."""
    check_seeds(seeds)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"--epochs must be an integer >= 1, got {epochs!r}")
    overrides = check_overrides(overrides or {})
    chosen = choose_members(records, top)
    members = []
    for r in chosen:
        base = int((r.config.get("train") or {}).get("seed", 0)) if isinstance(r.config, dict) else 0
        members.append(RefinedMember.of(r, [base + i for i in range(seeds)]))
    return Refinement(experiment, "front" if top is None else f"top {top}", epochs, seeds, overrides, members)


__all__ = ["MIN_SEEDS", "REFINED_FILE", "REFINE_OVERRIDABLE", "RefinedMember", "Refinement", "SeedRun", "Spread",
           "check_overrides", "check_seeds", "choose_members", "new_refinement", "refine_config", "refined_front",
           "spread"]
