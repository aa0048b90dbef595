"""The replay's event loop: simulated workers drive the real ``SearchController`` over recorded curves.

``replay_search`` runs a search as the Ray runner does (``suggest`` -> ``report`` per epoch ->
``complete``) with ``workers`` simulated parallel workers on an event queue over simulated time, so
the Optuna sampler and the pruning bridge are the product's own code (the curves: ``_replay``).

* a suggested configuration is mapped to the nearest recorded one of the same family; the
  controller's ``measure`` reports that recorded configuration's size, so the study, the budget check
  and the curve agree, while a sample that is over budget by its own exact size is rejected as in the
  real search;
* the pruner sees the recorded curve epoch by epoch; an optional ``stopper`` (for example Ray's ASHA
  on perplexity alone, see ``benchmarks/replay.py``) may also stop a trial, which is then completed
  as pruned, as the Ray runner does with a Ray scheduler;
* simulated compute is the sum of epochs actually trained (or their recorded seconds);
* ``proposal_time=None``: a proposal is synchronous and takes no simulated time. With ``proposal_time=d``
  the controller runs as in a Ray search (``prefetch=True``, ``slots=workers``): when it starts preparing a
  proposal in the background (``controller.proposal_refills`` grows) at simulated time t0, that proposal
  is usable from t0 + d; the results that arrive before are handled first (for real, while the background
  thread computes, so their wall-clock latency includes its share of the GIL and CPU) and are not seen by
  it; a free slot is filled at max(now, t0 + d). A proposal computed in ``suggest`` itself (the first,
  a retry after an over-budget sample, every one of a sampler that does not prefetch) holds the driver
  for d. What a proposal holds depends only on the snapshot it was given, so the replay stays deterministic.

Core module: imports numpy, optuna (through the controller) and the standard library; no Ray.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import SearchConfig
from ..controller import SearchController, corpus_vocab_size, size_reference
from ..pareto import log_hypervolume_of
from ..space import SearchSpace, model_cost
from ._replay import COSTS, Curve, CurveTable

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
    # the driver's own cost: seconds of each controller.suggest ("proposal") and report/complete ("result"),
    # the latter split by whether a proposal was being computed in the background when it was handled
    latency: dict = field(default_factory=lambda: {"proposal": [], "result": [], "result_during_proposal": [],
                                                   "result_no_proposal": []})
    # what happened in simulated time, in order: ("launch", t, number, t the proposal started, prepared in the
    # background), ("refill", t0), ("report", t, number, epoch), ("complete", t, number, status)
    log: list[tuple] = field(default_factory=list)
    trace_time: list[float] = field(default_factory=list)  # simulated time of each trace point (its completion)

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

    def time_to(self, target: float) -> float | None:
        """Simulated time when the hypervolume first reached ``target``; None if it never did."""
        for (_, hv), t in zip(self.trace, self.trace_time):
            if hv >= target:
                return t
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
    proposal_time: float | None = None,
    startup_trials: int = 0,
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
    ``proposal_time``: simulated compute a proposal takes, prepared in the background as in a Ray search
    (see the module's docstring); None (the default): synchronous and instantaneous. ``startup_trials``: a proposal
    made while fewer trials than that have closed takes no simulated time (ehvi's random start: its ``n_startup``).
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
    if proposal_time is not None:
        if isinstance(proposal_time, bool) or not isinstance(proposal_time, (int, float)) \
                or not math.isfinite(proposal_time) or proposal_time < 0:
            raise ValueError(f"proposal_time must be a number >= 0 or None, got proposal_time={proposal_time!r}")
        if not isinstance(startup_trials, int) or isinstance(startup_trials, bool) or startup_trials < 0:
            raise ValueError(f"startup_trials must be an integer >= 0, got startup_trials={startup_trials!r}")
        if config.trials != max_trials:  # the controller prepares proposals for launches to come, up to its trials
            config = config.replace(trials=max_trials)
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

    driver = threading.current_thread()
    last: list[int] = []  # the curve the driver's thread mapped last: the launched one once a refill starts

    def replay_measure(config: dict) -> tuple[int, int]:
        params, flops = exact(config)
        if space.exceeds_budget(params, flops):
            return params, flops  # rejected by the controller as in the real search
        model = config.get("model", {})
        sampled = _flat_sampled(config, space)
        if threading.current_thread() is driver:
            curve = table.nearest(str(model.get("cell")), sampled, params, used if fresh else frozenset())
            mapped[_key(config)] = curve
            last[:] = [curve.index]
        else:  # a background proposal's candidates: ``used`` as at its refill, whether or not the launch that
            # started it has been noted yet (so its timing cannot change what it proposes); never a launch's mapping
            curve = table.nearest(str(model.get("cell")), sampled, params, used | set(last) if fresh else frozenset())
        return curve.params, curve.flops

    controller = SearchController(config, vocab_size=vocab_size, measure=replay_measure, state_dir=state_dir,
                                  prefetch=proposal_time is not None)
    if proposal_time is not None:
        controller.slots = workers  # as the Ray runner sets it
    result = ReplayResult()
    events: list[tuple[float, int, int, int]] = []  # (time, tie-break, trial number, epoch)
    running: dict[int, Curve] = {}
    spent = committed = 0.0
    front_points: list[tuple[float, float]] = []  # the non-dominated finished (params, ppl): same hypervolume as all
    tick = 0
    by_number: dict[int, dict] = {}
    clock = 0.0  # the driver's simulated time: the latest event handled or launch made
    ready_at: float | None = None  # when the proposal being prepared in the background is usable (None: none is)
    proposed_at = 0.0  # when that proposal started (its snapshot)
    refills = closed = 0

    def cost_now() -> float:  # what a proposal started now takes: none in the sampler's random start
        return 0.0 if closed < startup_trials else proposal_time

    def step_cost(curve: Curve, epoch: int) -> float:
        if cost == "epochs":
            return 1.0
        return float(curve.epoch_s[epoch - 1]) if epoch - 1 < len(curve.epoch_s) else 0.0

    def note_refill(now: float) -> None:
        """A proposal started in the background by the call just made is usable ``proposal_time`` later."""
        nonlocal ready_at, refills, proposed_at
        if controller.proposal_refills != refills:
            refills = controller.proposal_refills
            ready_at, proposed_at = now + cost_now(), now
            result.log.append(("refill", now))

    def can_launch() -> bool:
        return len(running) < workers and spent + committed < budget and len(result.trials) < max_trials

    def launch(now: float) -> None:
        nonlocal committed, tick, ready_at, clock
        prepared, rejected = ready_at is not None, controller.rejected
        proposed = proposed_at if prepared else now  # when the proposal's snapshot was taken
        start = time.perf_counter()
        spec = controller.suggest()
        result.latency["proposal"].append(time.perf_counter() - start)
        if proposal_time is not None:  # one synchronous proposal unless prepared, one more per over-budget retry
            now += cost_now() * (int(not prepared) + controller.rejected - rejected)
            clock, ready_at = now, None
        result.log.append(("launch", now, spec.number, proposed, prepared))
        if proposal_time is not None:
            note_refill(now)
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

    def handled(call: Callable[[], Any]) -> Any:
        """``call()`` (a report or a completion), its wall-clock latency noted by whether a proposal was computing."""
        busy = not controller.proposal_ready()
        start = time.perf_counter()
        out = call()
        seconds = time.perf_counter() - start
        result.latency["result"].append(seconds)
        result.latency["result_during_proposal" if busy else "result_no_proposal"].append(seconds)
        return out

    def step(at: float, now: float, number: int, epoch: int) -> None:
        """Epoch ``epoch`` of trial ``number``, ended at ``at``, handled by the driver at ``now``."""
        nonlocal committed, spent, tick, front_points, closed
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
            prune = handled(lambda: controller.report(number, epoch, {"valid_ppl": value}))
            result.log.append(("report", now, number, epoch))
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
            heapq.heappush(events, (at + nxt, tick, number, epoch + 1))
            return

        def close() -> Any:
            record = controller.complete(number, status, {"valid_ppl": trial["valid_ppl"]})
            if on_complete is not None:
                on_complete(record, controller)
            return record

        record = handled(close)
        closed += 1
        result.log.append(("complete", now, number, record.status))
        if proposal_time is not None:
            note_refill(now)
        if stopper is not None:
            stopper.complete(number, trial["epochs"], trial["valid_ppl"])
        trial["status"] = record.status
        del running[number]
        if record.status == "finished":
            # the search's size objective (the curve's parameters for total, less what H-LSTM pruning masks)
            front_points = _add_to_front(front_points, (float(record.size_value), float(record.valid_ppl)))
        result.trace.append((spent, log_hypervolume_of(front_points, ref)))
        result.trace_time.append(now)

    while True:
        if can_launch():  # the next launch, once its proposal is ready; the results that come before go first
            at = clock if ready_at is None else max(clock, ready_at)
            if not events or events[0][0] >= at:
                launch(at)
                continue
        if not events:
            break
        now, _, number, epoch = heapq.heappop(events)
        clock = max(clock, now)
        step(now, clock, number, epoch)
    while not controller.proposal_ready():  # a proposal no launch took: let it end before the next replay runs
        time.sleep(0.005)
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


__all__ = ["ReplayResult", "Stopper", "replay_search"]
