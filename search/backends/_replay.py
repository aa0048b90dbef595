"""Replay a search over recorded learning curves: the real sampler and pruner, simulated training.

A table of recorded curves (``benchmarks/record_curves.py``: every epoch's validation perplexity
and time for a few hundred random configurations of a space) stands in for training. A simulated
search drives the real ``SearchController`` exactly as the Ray runner does (``suggest`` ->
``report`` per epoch -> ``complete``), with ``workers`` simulated parallel workers on an event
queue over simulated time, so the Optuna sampler and the pruning bridge are the product's own code.

* a suggested configuration is mapped to the nearest recorded one of the same family (distance over
  the normalised sampled values and log parameter count); the controller's ``measure`` reports that
  recorded configuration's size, so the study, the budget check and the curve agree, while a sample
  that is over budget by its own exact size is rejected as in the real search;
* the pruner sees the recorded curve epoch by epoch; an optional ``stopper`` (for example Ray's ASHA
  on perplexity alone, see ``benchmarks/replay.py``) may also stop a trial, which is then completed
  as pruned, as the Ray runner does with a Ray scheduler;
* simulated compute is the sum of epochs actually trained (or their recorded seconds).

Core module: imports numpy, optuna (through the controller) and the standard library; no Ray.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ..config import SearchConfig
from ..controller import SearchController, corpus_vocab_size, size_reference
from ..pareto import log_hypervolume_of, pareto_mask
from ..space import SearchSpace, model_cost

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


def _add_to_front(front: list[tuple[float, float]], point: tuple[float, float]) -> list[tuple[float, float]]:
    """``front`` (mutually non-dominated, both minimised) with ``point`` added: unchanged if a member is no worse
    in both, else without the members ``point`` is no worse than. Keeps the replay's hypervolume trace O(front)
    per trial instead of a Pareto sort of every finished trial."""
    if not all(math.isfinite(v) for v in point):
        return front
    if any(q[0] <= point[0] and q[1] <= point[1] for q in front):
        return front
    return [q for q in front if not (point[0] <= q[0] and point[1] <= q[1])] + [point]


class Stopper(Protocol):
    """An extra early-stopping rule beside the controller's pruner (e.g. Ray's ASHA on perplexity alone)."""

    def add(self, number: int) -> None: ...

    def result(self, number: int, epoch: int, valid_ppl: float) -> bool: ...  # True: stop now

    def complete(self, number: int, epoch: int, valid_ppl: float | None) -> None: ...


@dataclass
class ReplayResult:
    """One replayed search: the trace of (compute, hypervolume) after each completed trial, and its trials."""

    trace: list[tuple[float, float]] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    compute: float = 0.0
    counts: dict = field(default_factory=dict)
    # the driver's own cost: seconds of each controller.suggest ("proposal") and report/complete ("result")
    latency: dict = field(default_factory=lambda: {"proposal": [], "result": []})

    def hypervolume_at(self, budget: float) -> float:
        """Hypervolume reached by compute ``budget`` (0 before the first completed trial)."""
        best = 0.0
        for c, hv in self.trace:
            if c > budget:
                break
            best = hv
        return best

    def compute_to(self, target: float) -> float | None:
        """Compute spent when the hypervolume first reached ``target``; None if it never did."""
        for c, hv in self.trace:
            if hv >= target:
                return c
        return None

    def found(self, front: Iterable[Curve]) -> int:
        """How many of the ``front`` curves this search trained to the end (finished)."""
        done = {t["curve"] for t in self.trials if t["status"] == "finished"}
        return sum(1 for c in front if c.index in done)


def replay_search(
    table: CurveTable,
    config: SearchConfig,
    *,
    workers: int = 4,
    budget: float = 200.0,
    cost: str = "epochs",
    stopper: Stopper | None = None,
    vocab_size: int | None = None,
    ref: tuple[float, float] | None = None,
    measure: Callable[[dict], tuple[int, int]] | None = None,
    max_trials: int = 10000,
    fresh: bool = False,
    state_dir: str | Path | None = None,
    on_complete: Callable[[Any, SearchController], None] | None = None,
) -> ReplayResult:
    """Simulate the search ``config`` over ``table`` until ``budget`` compute is spent; returns its trace.

    ``config.space`` is the space the table was recorded from (its sampler, pruner, seed and epochs
    are the search's; where it runs is not read).
    ``workers`` trials run at once; each epoch costs 1 (``cost="epochs"``) or its recorded seconds.
    A trial is launched only while compute spent plus compute committed is below ``budget``, and
    trials in flight finish or are pruned as usual. ``ref`` is the hypervolume reference point
    (default: ``size_reference`` of the search's size objective and the vocabulary size, as the runner uses);
    ``measure`` is the exact size counter (default: the trainer's, for ``vocab_size``).
    ``fresh``: map each sample to the nearest recorded configuration *not yet launched* in this search
    (until a family runs out), so that a sampler homing in on one region of a sparse table trains a
    nearby new configuration, as it would in a real search, instead of repeating a known curve.
    ``state_dir`` keeps the controller's journal and records on disk, as a real search does;
    ``on_complete(record, controller)`` runs after each completion, as a real driver's tracking does
    (``benchmarks/driver_scale.py``); both count in the result-handling latency.
    """
    space = config.space
    recorded = tuple(f for f in space.families if f in table.by_family)
    if not recorded:
        raise ValueError(f"the table holds none of space {space.name!r}'s families {space.families}")
    if recorded != space.families:  # a family nothing was recorded for cannot be replayed: search the others
        space = dataclasses.replace(space, families=recorded)
        config = config.replace(space=space)
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got cost={cost!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got workers={workers!r}")
    if not (isinstance(budget, (int, float)) and budget > 0):
        raise ValueError(f"budget must be a positive number, got budget={budget!r}")
    epochs = space.trial_epochs(config.epochs)
    if vocab_size is None:
        vocab_size = corpus_vocab_size(space)
    exact = measure or (lambda config: model_cost(config, int(vocab_size)))
    if ref is None:
        if not space.max_params:
            raise ValueError("ref is required for a space without budget.max_params")
        ref = (size_reference(space, config.size_objective), float(vocab_size))
    mapped: dict[str, Curve] = {}
    used: set[int] = set()

    def replay_measure(config: dict) -> tuple[int, int]:
        params, flops = exact(config)
        if space.exceeds_budget(params, flops):
            return params, flops  # rejected by the controller as in the real search
        model = config.get("model", {})
        sampled = _flat_sampled(config, space)
        curve = table.nearest(str(model.get("cell")), sampled, params, used if fresh else frozenset())
        mapped[_key(config)] = curve
        return curve.params, curve.flops

    controller = SearchController(config, vocab_size=vocab_size, measure=replay_measure, state_dir=state_dir)
    result = ReplayResult()
    events: list[tuple[float, int, int, int]] = []  # (time, tie-break, trial number, epoch)
    running: dict[int, Curve] = {}
    spent = committed = 0.0
    front_points: list[tuple[float, float]] = []  # the non-dominated finished (params, ppl): same hypervolume as all
    tick = 0
    by_number: dict[int, dict] = {}

    def step_cost(curve: Curve, epoch: int) -> float:
        if cost == "epochs":
            return 1.0
        return float(curve.epoch_s[epoch - 1]) if epoch - 1 < len(curve.epoch_s) else 0.0

    def launch(now: float) -> bool:
        nonlocal committed, tick
        if spent + committed >= budget or len(result.trials) >= max_trials:
            return False
        start = time.perf_counter()
        spec = controller.suggest()
        result.latency["proposal"].append(time.perf_counter() - start)
        curve = mapped[_key(spec.config)]
        used.add(curve.index)
        running[spec.number] = curve
        if stopper is not None:
            stopper.add(spec.number)
        trial = {"number": spec.number, "curve": curve.index, "family": curve.family,
                 "params": curve.params, "status": "running", "epochs": 0, "valid_ppl": None}
        result.trials.append(trial)
        by_number[spec.number] = trial
        first = step_cost(curve, 1)
        committed += first
        tick += 1
        heapq.heappush(events, (now + first, tick, spec.number, 1))
        return True

    for _ in range(workers):
        if not launch(0.0):
            break
    while events:
        now, _, number, epoch = heapq.heappop(events)
        curve = running[number]
        c = step_cost(curve, epoch)
        committed -= c
        spent += c
        trial = by_number[number]
        status = None
        if epoch > len(curve.valid):  # the recorded run ended before this epoch (diverged or failed)
            status = curve.status if curve.status in ("diverged", "failed") else "failed"
        else:
            value = float(curve.valid[epoch - 1])
            trial["epochs"], trial["valid_ppl"] = epoch, value
            start = time.perf_counter()
            prune = controller.report(number, epoch, {"valid_ppl": value})
            result.latency["result"].append(time.perf_counter() - start)
            if stopper is not None and epoch < epochs:
                prune = stopper.result(number, epoch, value) or prune
            if epoch >= epochs:
                status = "finished"
            elif prune:
                status = "pruned"
        if status is None:
            nxt = step_cost(curve, epoch + 1)
            committed += nxt
            tick += 1
            heapq.heappush(events, (now + nxt, tick, number, epoch + 1))
            continue
        start = time.perf_counter()
        record = controller.complete(number, status, {"valid_ppl": trial["valid_ppl"]})
        if on_complete is not None:
            on_complete(record, controller)
        result.latency["result"].append(time.perf_counter() - start)
        if stopper is not None:
            stopper.complete(number, trial["epochs"], trial["valid_ppl"])
        trial["status"] = record.status
        del running[number]
        if record.status == "finished":
            # the search's size objective (the curve's parameters for total, less what H-LSTM pruning masks)
            front_points = _add_to_front(front_points, (float(record.size_value), float(record.valid_ppl)))
        result.trace.append((spent, log_hypervolume_of(front_points, ref)))
        launch(now)
    result.compute = spent
    result.counts = controller.counts()
    controller.flush()  # the whole records file, as a real search leaves it
    return result


def _flat_sampled(config: dict, space: SearchSpace) -> dict:
    """The searched values of a config in ``sampled``'s flat dotted form (knobs plus family arguments)."""
    out: dict[str, Any] = {}
    for key in space.knobs:
        section, name = key.split(".", 1)
        if name in config.get(section, {}):
            out[key] = config[section][name]
    for name in ("rank", "groups", "num_cells", "routing", "share", "gate_hidden"):
        value = config.get("model", {}).get(name)
        if value is not None:
            out[f"model.{name}"] = value
    return out


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


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


__all__ = ["COSTS", "TABLE_COLUMNS", "Curve", "CurveTable", "ReplayResult", "Stopper", "replay_search"]
