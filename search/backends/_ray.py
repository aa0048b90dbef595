"""Ray Tune adapter: the search controller's decisions wired into Ray's searcher and scheduler slots.

Ray decides WHERE a trial runs; the framework-light ``SearchController`` decides WHAT to try and
WHETHER to go on. This module is the thin edge between them:

* ``ControllerSearcher`` (a Ray ``Searcher``): ``suggest()`` asks ``controller.suggest()`` and
  ``on_trial_complete()`` tells ``controller.complete()`` (finished / pruned / failed / diverged).
* ``ControllerScheduler`` (a FIFO Ray scheduler): ``on_trial_result()`` passes each epoch to
  ``controller.report()`` and returns STOP when it says prune.
* ``run_trial``: the function trainable that trains one ``TrialSpec`` with the project's trainer,
  reporting every epoch (with a checkpoint) to Ray and, if configured, to the MLflow trial logger.

Ray pickles the searcher and scheduler (``tuner.pkl``, searcher checkpoints); the live controller
(an Optuna study over a journal file) must not travel with them, so both hold only a session
token that resolves to the driver's live ``SearchSession``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from squeezelstm.trainers import Config, train
from squeezelstm.trainers.checkpoint import checkpoint_path, load_checkpoint

from ..pareto import TrialRecord, log_hypervolume, pareto_front, size_text
from ._tracking_queue import TrackingQueue

# Keys of an epoch's metrics that are passed on to the controller (Ray adds many of its own).
_FINAL_KEYS = ("valid_ppl", "test_ppl", "train_ppl", "params", "tokens_per_s", "epochs", "elapsed_s", "history")


@dataclass(frozen=True)
class SearchEvent:
    """One thing that happened in a search, for live progress (``line()`` is the human form)."""

    kind: str  # started | finished | pruned | failed | diverged
    number: int
    record: TrialRecord | None
    running: int
    counts: dict[str, int]
    front_size: int
    hypervolume: float | None

    def line(self) -> str:
        """One line for the console, e.g. ``trial 3 finished: grouped 12,345 params, 4,567 recurrent, 89,012 flops, valid ppl 41.2 | ...``."""
        rec = self.record
        what = f"trial {self.number} {self.kind}"
        if rec is not None:
            what += f": {rec.family} {size_text(rec)}"
            if self.kind != "started" and rec.valid_ppl is not None and math.isfinite(rec.valid_ppl):
                what += f", valid ppl {rec.valid_ppl:.2f} after {rec.epochs} epoch(s)"
        done = ", ".join(f"{self.counts.get(k, 0)} {k}" for k in ("finished", "pruned", "failed", "diverged"))
        hv = "" if self.hypervolume is None else f", hypervolume {self.hypervolume:.4f}"
        return f"{what} | {self.running} running, {done} | front {self.front_size}{hv}"


@dataclass
class SearchSession:
    """The driver-side state shared by the searcher, scheduler and runner for one ``fit()``.

    ``reissue`` holds specs of trials the controller started in an earlier, interrupted session:
    they are handed out again (same number, same config) before anything new is sampled, and
    their trainer resumes from the checkpoint in ``trials_dir``.
    """

    controller: Any
    trials: int
    trials_dir: str
    threads: int = 1
    tracker: Any = None
    progress: Callable[[SearchEvent], None] | None = None
    ref_params: float | None = None
    ref_ppl: float | None = None
    optimal_ppl: float | None = None
    reissue: list = field(default_factory=list)
    on_change: Callable[[], None] | None = None
    events: Any = None  # a DriverEventLog (SQUEEZELSTM_DRIVER_EVENTS), or None
    track: TrackingQueue = field(default_factory=TrackingQueue)  # the tracker's per-completion work runs there
    started: set = field(default_factory=set)
    completed: set = field(default_factory=set)
    error: Exception | None = None
    front: list | None = None  # the finished trials' front, kept as trials close (the progress line's)

    def issued(self) -> int:
        """Trial numbers the controller has handed out, over all sessions of this search."""
        return self.controller.n_records()

    def emit(self, kind: str, number: int, record: TrialRecord | None) -> None:
        """A ``SearchEvent`` to ``progress``; its front and hypervolume come from the kept front, not every record."""
        if self.front is None:
            self.front = self.controller.front()
        elif record is not None and kind == "finished":
            self.front = pareto_front(self.front + [record])
        if self.progress is None:
            return
        counts = {k: v for k, v in self.controller.counts().items() if v and k != "rejected"}
        hv = None
        if self.ref_params and self.ref_ppl:
            hv = log_hypervolume(self.front, self.ref_params, self.ref_ppl)
        running = len(self.started - self.completed)
        self.progress(SearchEvent(kind, number, record, running, counts, len(self.front), hv))


# Ray pickles the searcher and the scheduler it is given, so they hold a token, not the session; the
# token finds the session here, in the driver process, only while ``live_session`` holds it open.
_SESSIONS: dict[str, SearchSession] = {}


@contextlib.contextmanager
def live_session(session: SearchSession) -> Iterator[str]:
    """Make ``session`` reachable from pickled searchers/schedulers for the ``with`` block; yields its token."""
    token = register_session(session)
    try:
        yield token
    finally:
        release_session(token)


def register_session(session: SearchSession) -> str:
    """Make ``session`` reachable from pickled searchers/schedulers; returns its token."""
    token = uuid.uuid4().hex
    _SESSIONS[token] = session
    return token


def release_session(token: str) -> None:
    _SESSIONS.pop(token, None)


def _session(token: str) -> SearchSession:
    try:
        return _SESSIONS[token]
    except KeyError:
        raise RuntimeError(f"search session {token} is not live in this process") from None


def spec_to_dict(spec: Any) -> dict:
    """A ``TrialSpec`` (or record) as the plain dict that travels in a Ray trial's config."""
    return {
        "number": int(spec.number),
        "family": spec.family,
        "config": spec.config,
        "sampled": dict(spec.sampled),
        "params": int(spec.params),
        "flops": int(spec.flops),
        "recurrent_params": int(getattr(spec, "recurrent_params", 0)),
        "size": str(getattr(spec, "size", "total")),
    }


class ControllerSearcher(Searcher):
    """Ray searcher whose suggestions and bookkeeping are the controller's.

    Keeps the Ray trial id -> controller trial number map (saved with Ray's searcher checkpoint
    and also carried in every trial's config, so it is never lost).
    """

    def __init__(self, token: str):
        # No metric/mode: the objectives (params, valid_ppl) are the controller's business, and
        # Ray's strict metric check would reject results that lack a single metric.
        super().__init__()
        self._token = token
        self._numbers: dict[str, int] = {}

    def __getstate__(self) -> dict:
        return {"_token": self._token, "_numbers": dict(self._numbers), "_metric": None, "_mode": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def suggest(self, trial_id: str) -> dict | None:
        s = _session(self._token)
        start, cpu = time.time(), time.thread_time()
        if s.reissue:
            spec = s.reissue.pop(0)
        elif s.started - s.completed and not getattr(s.controller, "proposal_ready", lambda: True)():
            # The next proposal is still being computed in the background: hand out nothing now, so Ray's
            # loop goes on handling results and pruning decisions; it asks again on its next step.
            if s.events is not None:
                s.events.write("suggest", number=None, start=start, end=time.time(), deferred=True, cpu_s=0.0)
            return None
        elif s.issued() >= s.trials:
            return Searcher.FINISHED
        else:
            try:
                spec = s.controller.suggest()
            except ValueError as exc:
                # e.g. nothing in the space fits the budget: stop handing out trials and let the
                # runner re-raise it as the one-line error it is (Ray would bury it in a TuneError).
                s.error = exc
                return Searcher.FINISHED
        number = int(spec.number)
        if s.events is not None:
            s.events.write("suggest", number=number, start=start, end=time.time(), deferred=False,
                           cpu_s=time.thread_time() - cpu)
        self._numbers[trial_id] = number
        s.started.add(number)
        logger = s.tracker.trial_logger(number) if s.tracker is not None else None
        s.emit("started", number, s.controller.record(number))
        return {
            "number": number,
            "spec": spec_to_dict(spec),
            "trials_dir": s.trials_dir,
            "threads": s.threads,
            "logger": logger,
        }

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        s = _session(self._token)
        number = self._numbers.get(trial_id)
        if number is None and result is not None:
            number = result.get("number", result.get("config", {}).get("number"))
        if number is None:
            return
        arrived = time.time()
        proposing = _proposing(s.controller) if s.events is not None else None
        if error:
            status, final = "failed", None
        elif result is not None and result.get("final"):
            status = result.get("trial_status", "finished")
            final = {k: result[k] for k in _FINAL_KEYS if k in result}
        else:
            # Ended without a final result and without an error: the scheduler stopped it.
            status, final = "pruned", None
        record = s.controller.complete(number, status, final)
        s.completed.add(number)
        if s.tracker is not None:  # off Ray's loop, in order; an earlier completion's tracking failure ends it here
            s.track.check()
            s.track.submit(lambda: _track_completion(s, record))
        if s.on_change is not None:
            s.on_change()
        s.emit(record.status, number, record)
        if s.events is not None:
            reported = result.get("reported_at") if result is not None and result.get("final") else None
            s.events.write("complete", number=number, status=record.status, reported_at=reported, arrived=arrived,
                           wait_s=None if reported is None else arrived - reported, handle_s=time.time() - arrived,
                           proposing=proposing)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"numbers": self._numbers}))

    def restore(self, checkpoint_path: str) -> None:
        self._numbers = {k: int(v) for k, v in json.loads(Path(checkpoint_path).read_text())["numbers"].items()}


class ControllerScheduler(FIFOScheduler):
    """FIFO scheduling with the controller's pruner: each epoch goes to ``controller.report()``."""

    def __init__(self, token: str):
        super().__init__()
        self._token = token

    def __getstate__(self) -> dict:
        return {"_token": self._token, "_metric": None, "_mode": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("final") or "epoch" not in result:
            return TrialScheduler.CONTINUE
        s = _session(self._token)
        arrived = time.time()
        proposing = _proposing(s.controller) if s.events is not None else None
        metrics = _epoch_metrics(result)
        prune = s.controller.report(int(trial.config["number"]), int(result["epoch"]), metrics)
        if s.events is not None:
            reported = result.get("reported_at")
            s.events.write("result", number=int(trial.config["number"]), epoch=int(result["epoch"]),
                           reported_at=reported, arrived=arrived, wait_s=None if reported is None else arrived - reported,
                           handle_s=time.time() - arrived, proposing=proposing, prune=bool(prune))
        return TrialScheduler.STOP if prune else TrialScheduler.CONTINUE


def _track_completion(s: SearchSession, record: Any) -> None:
    """A closed trial's MLflow work: its child run ended, the parent's front brought up to date."""
    s.tracker.end_trial(record)
    if s.ref_params and s.ref_ppl:
        s.tracker.update_front(  # the records are read only when the front's files are due (shallow copies)
            s.controller.records_view, ref_params=s.ref_params, ref_ppl=s.ref_ppl, optimal_ppl=s.optimal_ppl
        )


def _proposing(controller: Any) -> bool | None:
    """Whether the controller's next proposal is being computed now (None: it does not say)."""
    ready = getattr(controller, "proposal_ready", None)
    return None if ready is None else not ready()


def _epoch_metrics(result: dict) -> dict:
    """The trainer's metrics of an epoch result (Ray hands schedulers flattened ``metrics/...`` keys)."""
    metrics = dict(result.get("metrics") or {})
    prefix = "metrics/"
    metrics.update({k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)})
    return metrics


def _checkpoint_history(ckpt_dir: Path) -> list[dict]:
    """Per-epoch metrics stored in the trainer's checkpoint in ``ckpt_dir`` (empty when there is none)."""
    path = checkpoint_path(ckpt_dir)
    if not path.exists():
        return []
    return [dict(h) for h in load_checkpoint(path).get("history", []) if "epoch" in h]


def _restore_checkpoint(ckpt_dir: Path) -> None:
    """Seed the trainer's checkpoint folder from Ray's latest checkpoint (a retry on another node)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None or (ckpt_dir.exists() and any(ckpt_dir.iterdir())):
        return
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as src:
        shutil.copytree(src, ckpt_dir, dirs_exist_ok=True)


def run_trial(config: dict) -> None:
    """Ray function trainable: train one trial spec, reporting every epoch; ends with a final result.

    The last report carries ``final=True``, ``trial_status`` (finished / diverged / failed) and the
    final perplexities; an exception propagates to Ray, which records the trial as failed.
    """
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    spec = config["spec"]
    number = int(spec["number"])
    # a refinement trains each trial with several seeds, each in a folder of its own (``dirname``)
    ckpt_dir = Path(config["trials_dir"]) / config.get("dirname", f"trial_{number:04d}")
    _restore_checkpoint(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    logger = config.get("logger")
    if logger is not None:
        logger.start(spec["config"], spec["params"], spec["flops"], spec["sampled"],
                     recurrent_params=int(spec.get("recurrent_params", 0)), size=str(spec.get("size", "total")))

    def report(epoch: int, metrics: dict) -> bool:
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        if logger is not None:
            logger.log_epoch(epoch, clean)
        checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if any(ckpt_dir.iterdir()) else None
        tune.report(
            {"number": number, "epoch": int(epoch), "metrics": clean, "valid_ppl": clean.get("valid_ppl"),
             "reported_at": time.time()},  # the driver's event log measures how long a result waits
            checkpoint=checkpoint,
        )
        return True  # Ray stops the trial itself when the controller prunes it.

    cfg = Config.from_dict(spec["config"])
    # Concurrent trials must not oversubscribe the node: each gets its own share of the cores.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=int(config.get("threads", 1))))
    # A driver killed between the trainer's checkpoint and its report loses that epoch's report:
    # replay the resumed checkpoint's history first (the controller keeps one entry per epoch).
    for entry in _checkpoint_history(ckpt_dir):
        report(int(entry["epoch"]), entry)
    result = train(cfg, report=report, checkpoint_dir=ckpt_dir, resume=True)
    final = {
        "final": True,
        "number": number,
        "trial_status": result.status,
        "valid_ppl": _num(getattr(result, "valid_ppl", None)),
        "test_ppl": _num(getattr(result, "test_ppl", None)),
        "params": int(getattr(result, "params", spec["params"])),
        "tokens_per_s": _num(getattr(result, "tokens_per_s", None)),
        "epochs": int(getattr(result, "epochs", 0)),
        "history": [{k: v for k, v in h.items() if isinstance(v, (int, float, str, bool))}
                    for h in getattr(result, "history", []) or []],
    }
    if logger is not None:
        logger.finish(result.status, {k: v for k, v in final.items() if v is not None and k != "history"})
    tune.report({**final, "reported_at": time.time()})


def _num(value: Any) -> float | None:
    return None if value is None else float(value)
