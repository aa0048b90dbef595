"""``run_refine``: a refinement's (member, seed) runs as Ray Tune trials of the search's own trial function.

Each run is ``run_trial`` (the search's trainable: a checkpoint every epoch, the epochs reported to Ray and
to MLflow) on the member's config with ``train.seed`` (and the refinement's epochs and ``train.*`` settings),
checkpointed under ``<experiment dir>/refine/member_NNNN_seed_S``. ``refined.json`` beside the search's
records is the single source of truth: rewritten whenever a run starts or ends, so a driver stopped at any
point loses nothing; a resumed refinement runs only the pairs that have not ended, each continuing from its
last epoch checkpoint. There is no pruning: every run trains its full budget.

Ray is imported when a refinement starts, not with this module.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from squeezelstm.spaces._kernels import kernels
from squeezelstm.trainers.files import atomic_write_text, json_safe

from ..pareto import REFINED_FILE, Refinement
from ._driver_lock import hold as hold_driver_lock
from ._interrupt import SearchInterrupted, StopSignals, fit_until_signal
from ._runner import _check_reachable, _start_ray, concurrency, quiet_libraries
from ._storage import SearchPaths, check_writable, resolve_paths
from ._threads import ray_nodes, trial_threads

REFINE_DIR = "refine"


def refined_path(paths: SearchPaths) -> Path:
    """Where a search's refinement lives: ``refined.json`` next to its records."""
    return paths.experiment_dir / REFINED_FILE


def write_refinement(path: Path, refinement: Refinement) -> None:
    """Atomically write ``refinement`` as JSON (``Refinement.to_dict``: members, seed runs, spreads, the front)."""
    atomic_write_text(Path(path), json.dumps(json_safe(refinement.to_dict()), indent=1, allow_nan=False))


def read_refinement(path: Path) -> Refinement:
    """The refinement in ``path`` (written by ``write_refinement``); ValueError naming the file if unreadable."""
    try:
        return Refinement.from_dict(json.loads(Path(path).read_text()))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a refinement file ({type(exc).__name__}: {exc})") from None


def run_dirname(member: int, seed: int) -> str:
    """The checkpoint (and Ray trial) folder of one run: ``member_NNNN_seed_S``."""
    return f"member_{int(member):04d}_seed_{int(seed)}"


def run_refine(refinement: Refinement, *, storage: str | None = None, tracker: Any = None, address: str | None = None,
               cpus_per_trial: float = 1, gpus_per_trial: float = 0, max_concurrent: int | None = None,
               max_failures: int = 0, progress: Callable[[Any], None] | None = None) -> Refinement:
    """Train every (member, seed) run of ``refinement`` that has not ended, on Ray Tune; returns it, filled in.

    ``refined.json`` under ``storage`` is written as runs start and end (and at the stop); ``tracker``
    (a ``tracking.RefineTracker``) logs a parent run and a child per run. A signal stops it with
    ``SearchInterrupted`` (its ``counts`` are the runs per status); the runs keep their epoch checkpoints.
    """
    if not isinstance(refinement, Refinement):
        raise TypeError(f"refinement must be a Refinement, got refinement={refinement!r}")
    paths = resolve_paths(refinement.experiment, storage)
    with hold_driver_lock(paths.experiment_dir, refinement.experiment, on_os_error=lambda: check_writable(paths)), \
            quiet_libraries() as quiet_again:
        if address:
            _check_reachable(address)
        check_writable(paths)
        if tracker is not None:
            quiet_again()
            tracker.check()
        kernels()  # build the compiled recurrences once, here, not in every trial process at once
        started_ray = _start_ray(address, cpus_per_trial)
        try:
            return _fit(refinement, paths, tracker, address, cpus_per_trial, gpus_per_trial, max_concurrent,
                        max_failures, progress)
        finally:
            if started_ray:
                import ray

                ray.shutdown()


def _fit(refinement: Refinement, paths: SearchPaths, tracker: Any, address: str | None, cpus_per_trial: float,
         gpus_per_trial: float, max_concurrent: int | None, max_failures: int,
         progress: Callable | None) -> Refinement:
    from ray import tune

    from ._ray import run_trial
    from ._refine_trials import RefineSearcher, RefineSession, live_refine_session

    limit = concurrency(address, cpus_per_trial, gpus_per_trial, max_concurrent)
    out = refined_path(paths)
    if tracker is not None:
        tracker.start_refine(refinement)
    for m, r in refinement.pending():
        r.status = "pending"  # a run that was running when an earlier driver stopped starts again (from its checkpoint)
    write_refinement(out, refinement)
    session = RefineSession(
        refinement=refinement, checkpoints=str(paths.experiment_dir / REFINE_DIR),
        threads=trial_threads(cpus_per_trial, gpus_per_trial, ray_nodes()), tracker=tracker, progress=progress,
        on_change=lambda: write_refinement(out, refinement), queue=[(m.number, r.seed) for m, r in refinement.pending()])
    status = "FINISHED"
    with StopSignals() as stop, live_refine_session(session) as token:
        try:
            if session.queue:
                tuner = tune.Tuner(
                    tune.with_resources(run_trial, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
                    tune_config=tune.TuneConfig(
                        search_alg=RefineSearcher(token), num_samples=len(session.queue),
                        max_concurrent_trials=limit, reuse_actors=True,
                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
                    run_config=tune.RunConfig(
                        name=f"refine-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
                        storage_path=paths.ray_storage, verbose=0,
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                        failure_config=tune.FailureConfig(max_failures=max_failures)),
                )
                fit_until_signal(tuner.fit, stop)
        except BaseException as exc:
            status = "KILLED"
            if isinstance(exc, KeyboardInterrupt) and stop.signum is not None:
                raise _stopped(stop, refinement, immediate=True) from None
            if isinstance(exc, SearchInterrupted):
                exc.counts = refinement.counts()
            raise
        finally:
            try:
                write_refinement(out, refinement)
                if tracker is not None:
                    tracker.update(refinement)
                    tracker.end_search(status)
            except (SearchInterrupted, KeyboardInterrupt):  # a second signal while closing: stop at once
                raise _stopped(stop, refinement, immediate=True) from None
    return refinement


def _stopped(stop: StopSignals, refinement: Refinement, immediate: bool) -> SearchInterrupted:
    exc = SearchInterrupted(stop.signum or signal.SIGINT, immediate=immediate)
    exc.counts = refinement.counts()
    return exc


def _trial_name(trial: Any) -> str:
    return str(trial.config["dirname"])


__all__ = ["REFINE_DIR", "read_refinement", "refined_path", "run_dirname", "run_refine",
           "write_refinement"]
