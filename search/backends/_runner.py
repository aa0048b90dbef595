"""``run_search``: one search (or the continuation of an interrupted one) on Ray Tune.

The search controller's journal (``<experiment dir>/controller``) is the single source of truth:
it is written the moment a trial is sampled, reported or completed, so a driver killed at any
point loses nothing. Resuming therefore does not replay Ray's own experiment snapshot (written
only every so often, it can lag behind and would re-run trials that had already finished);
instead every session is a fresh Ray experiment under ``<experiment dir>/ray``, whose searcher
first hands out again the trials the controller still has as running (same number, same config;
their trainer continues from its per-epoch checkpoint under ``<experiment dir>/trials``) and then
samples new ones until the requested number exists in total.

Ray is imported when a search starts (about two seconds), not with this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from squeezelstm.spaces._kernels import kernels
from squeezelstm.trainers.files import BackgroundWriter

from ..config import SearchConfig
from ..controller import SearchController, size_reference
from ..pareto import TrialRecord, log_hypervolume, pareto_front, records_dataframe
from ..tracking import FrontFiles, SearchTracker
from ._driver_lock import hold as hold_driver_lock
from ._event_log import DriverEventLog
from ._gc import survivors_frozen
from ._interrupt import SearchInterrupted, StopSignals, fit_until_signal
from ._storage import RecordsFile, SearchPaths, check_writable, has_state, resolve_paths
from ._threads import ray_nodes, trial_threads


@dataclass(frozen=True)
class SearchResult:
    """What a search returns: every trial's record, the Pareto front (finished trials only), paths."""

    experiment: str
    records: list[TrialRecord]
    front: list[TrialRecord]
    paths: SearchPaths
    hypervolume: float | None = None
    elapsed_s: float = 0.0

    def trials_dataframe(self) -> pd.DataFrame:
        """Every trial as one row of a DataFrame (``pareto.records_dataframe``)."""
        return records_dataframe(self.records)


def _reference_point(config: SearchConfig, controller: SearchController) -> tuple[float | None, float | None, float | None]:
    """``(ref_params, ref_ppl, optimal_ppl)``: fixed for the whole search so hypervolumes compare.

    The reference is the budget's ``max_params`` (``max_flops`` for a FLOPs objective, where set:
    ``controller.size_reference``) and the vocabulary size (the perplexity of a model that learned
    nothing); without a parameter budget there is no hypervolume.
    """
    ref_params = size_reference(config.space, config.size_objective)
    vocab = controller.vocab_size
    optimal = None
    try:
        corpus = controller.corpus
        vocab = vocab or corpus.vocab_size
        optimal = corpus.optimal_ppl
    except (AttributeError, OSError, ValueError):
        pass
    return (float(ref_params) if ref_params else None, float(vocab) if vocab else None,
            float(optimal) if optimal else None)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes, when a ``host:port`` Ray address has nothing listening.

    (``ray.init`` keeps retrying an unreachable GCS for a long time.) ``auto`` and other forms
    are left to Ray.
    """
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ValueError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _start_ray(address: str | None, cpus_per_trial: float) -> bool:
    """Connect to (``address``) or start a quiet local Ray; returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                                  configure_logging=True)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot reach the Ray cluster at {address}: {first}") from None
    return True


# Ray Tune's console reporting: off (we print our own one-line events); MLflow's store announcements:
# off. Set (where the user has not) for the search only, then put back.
_QUIET_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_DEDUP_LOGS": "0",
              "MLFLOW_LOGGING_LEVEL": "WARNING"}
# Ray's loggers: errors only (a failed trial's traceback is still written to the trial's error file under
# the Ray folder); MLflow and its migrations announce every new sqlite store at INFO: noise next to progress.
_QUIET_LOGGERS = {"ray.tune": logging.CRITICAL, "ray.train": logging.CRITICAL, "ray.air": logging.CRITICAL,
                  "mlflow": logging.WARNING, "alembic": logging.WARNING}


@contextlib.contextmanager
def quiet_libraries() -> Iterator[Callable[[], None]]:
    """Ray's and MLflow's console noise off while a search runs; the environment and logger levels are
    restored afterwards. Yields a function that sets the levels again (MLflow's import resets its own)."""
    saved_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    saved_levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)

    def apply() -> None:
        for name, level in _QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)

    apply()
    try:
        yield apply
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def _stopped_at_once(stop: StopSignals, controller: Any) -> SearchInterrupted:
    """The interruption a second signal makes: the first signal's name, stopped at once, what finished."""
    exc = SearchInterrupted(stop.signum or signal.SIGINT, immediate=True)
    exc.counts = controller.counts()
    return exc


def run_search(config: SearchConfig, *, resume: bool = False, progress: Callable[[Any], None] | None = None,
               front_files: FrontFiles | None = None) -> SearchResult:
    """Run the search ``config`` on Ray Tune: ``config.trials`` trials of ``config.space``.

    Returns the records of every trial of the experiment (over all sessions when resuming) and its
    Pareto front. ``resume=True`` continues the experiment's earlier, interrupted search: finished
    trials are kept, unfinished ones continue from their last checkpoint, and new ones are sampled
    until ``trials`` exist in total. ``progress`` receives a ``SearchEvent`` per trial event.
    ``front_files`` writes the front's tables and report that MLflow keeps on the parent run
    (``squeezelstm.dashboards.write_front_files``; without it only tags and metrics are logged).
    """
    if not isinstance(config, SearchConfig):
        raise TypeError(f"config must be a SearchConfig, got config={config!r}")
    paths = resolve_paths(config.experiment, config.storage)
    # the only driver of the experiment: a second one is refused with DriverRunning
    with hold_driver_lock(paths.experiment_dir, config.experiment, on_os_error=lambda: check_writable(paths)), \
            quiet_libraries() as quiet_again:
        return _run(config, resume, progress, front_files, quiet_again)


def _run(config: SearchConfig, resume: bool, progress: Callable | None, front_files: FrontFiles | None,
         quiet_again: Callable[[], None]) -> SearchResult:
    experiment = config.experiment
    paths = resolve_paths(experiment, config.storage)
    existed = has_state(paths)
    if existed and not resume:
        raise ValueError(
            f"experiment {experiment!r} already exists in {paths.experiment_dir}; "
            "pass --resume to continue it or choose another --experiment"
        )
    if resume and not existed:
        raise ValueError(f"nothing to resume: no search state for experiment {experiment!r} in {paths.experiment_dir}")
    if config.address:
        _check_reachable(config.address)
    check_writable(paths)
    # The periodic whole writes (the records snapshot, the records file, the front's files and report) run on one
    # background thread, so no result waits for them on Ray's event loop; each is drained at the end.
    writer = BackgroundWriter()
    # An unreachable MLflow store is reported before anything of the experiment is created.
    tracker = SearchTracker(config.tracking_uri, experiment, front_files, writer=writer) if config.track else None
    quiet_again()  # after MLflow's import, which sets its own logger levels
    if tracker is not None:
        tracker.check()
    try:
        controller = SearchController(config, state_dir=paths.state_dir, prefetch=True, writer=writer)
    except BaseException:
        if not existed:  # a bad sampler/pruner argument must not leave a half-made experiment behind
            shutil.rmtree(paths.state_dir, ignore_errors=True)
        raise
    refs = _reference_point(config, controller)
    # Build the compiled recurrences here, once and with its message on the user's terminal, rather than
    # in every trial process at once (they would queue on the build lock with their clocks running).
    kernels()

    try:
        started_ray = _start_ray(config.address, config.cpus_per_trial)
    except BaseException:
        _forget_if_empty(paths, existed, controller)
        raise
    try:
        return _fit(config, controller, paths, tracker, resume=resume, progress=progress, refs=refs, writer=writer)
    except BaseException:
        _forget_if_empty(paths, existed, controller)
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def concurrency(address: str | None, cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None) -> int:
    """Trials at once on the connected Ray (``max_concurrent``, else as its CPUs allow); ValueError when a
    local Ray cannot hold one trial (a local Ray never grows: the trial would wait forever)."""
    import ray

    available = ray.cluster_resources()
    if not address and not os.environ.get("RAY_ADDRESS"):
        for key, want in (("CPU", cpus_per_trial), ("GPU", gpus_per_trial)):
            if want > available.get(key, 0):
                raise ValueError(f"each trial asks for {want:g} {key}(s) but this machine's Ray has "
                                 f"{available.get(key, 0):g}; lower --{key.lower()}s-per-trial")
    return max_concurrent or max(1, int(available.get("CPU", 1) // cpus_per_trial))


def _forget_if_empty(paths: SearchPaths, existed: bool, controller: Any) -> None:
    """A new search that failed before its first trial leaves nothing behind (so it needs no --resume)."""
    if not existed and not controller.records():
        shutil.rmtree(paths.state_dir, ignore_errors=True)


def _trial_name(trial: Any) -> str:
    return f"trial_{int(trial.config['number']):04d}"


def _fit(config: SearchConfig, controller: SearchController, paths: SearchPaths, tracker: SearchTracker | None, *,
         resume: bool, progress: Callable | None, refs: tuple, writer: BackgroundWriter | None = None) -> SearchResult:
    from ray import tune

    from ._ray import ControllerScheduler, ControllerSearcher, SearchSession, live_session, run_trial

    cpus_per_trial, gpus_per_trial = config.cpus_per_trial, config.gpus_per_trial
    max_concurrent = concurrency(config.address, cpus_per_trial, gpus_per_trial, config.max_concurrent)
    controller.slots = max_concurrent  # a proposal prepared for a full house would miss the next result
    t0 = time.time()
    ref_params, ref_ppl, optimal_ppl = refs
    space = config.space
    meta = {"experiment": config.experiment, "space": space.name, "space_source": space.source,
            "trials": config.trials, "sampler": config.sampler, "pruner": config.pruner, "seed": config.seed,
            "epochs": config.epochs, "size": config.size_objective, "ref_params": ref_params, "ref_ppl": ref_ppl, "optimal_ppl": optimal_ppl,
            "trials_dir": str(paths.trials_dir), "config": config.to_dict()}
    if tracker is not None:
        tracker.start_search(params={k: v for k, v in meta.items() if v is not None and k != "config"},
                             tags={"space": str(meta["space"]), "squeezelstm.size": config.size_objective}, resume=resume, config=meta["config"])
        if resume:
            tracker.end_stale_trials(controller.records())

    unfinished = controller.unfinished()
    records_file = RecordsFile(paths.records_file, meta, writer=writer)  # whole every 30 s at most, in the background
    session = SearchSession(
        controller=controller, trials=config.trials, trials_dir=str(paths.trials_dir),
        threads=trial_threads(cpus_per_trial, gpus_per_trial, ray_nodes()), tracker=tracker, progress=progress,
        ref_params=ref_params, ref_ppl=ref_ppl, optimal_ppl=optimal_ppl, reissue=list(unfinished),
        on_change=lambda: records_file.maybe_write(controller.records_view),
        events=DriverEventLog.from_env(paths.experiment_dir),
    )
    to_run = len(unfinished) + max(0, config.trials - len(controller.records()))
    status = "FINISHED"
    # The handlers last until the records are written: a second Ctrl-C that lands after Ray's loop has
    # already ended gracefully still stops as an interruption, not as a bare KeyboardInterrupt.
    with StopSignals() as stop:
        try:
            with live_session(session) as token:
                if to_run > 0:
                    resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
                    name = f"session-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
                    tuner = tune.Tuner(
                        tune.with_resources(run_trial, resources),
                        tune_config=tune.TuneConfig(
                            search_alg=ControllerSearcher(token), scheduler=ControllerScheduler(token),
                            num_samples=to_run, max_concurrent_trials=max_concurrent, reuse_actors=True,
                            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                        ),
                        run_config=tune.RunConfig(
                            name=name, storage_path=paths.ray_storage, verbose=0,
                            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                            failure_config=tune.FailureConfig(max_failures=config.max_failures),
                        ),
                    )
                    with survivors_frozen():  # no full garbage collection walking every trial's objects
                        fit_until_signal(tuner.fit, stop)  # SearchInterrupted on Ctrl-C / SIGTERM; running trials keep their checkpoints
                    if session.error is not None:
                        raise session.error
        except BaseException as exc:
            status = "KILLED"
            if isinstance(exc, KeyboardInterrupt) and stop.signum is not None:
                # a second signal that met Python's default handler (Ray may restore it as its loop ends)
                raise _stopped_at_once(stop, controller) from None
            if isinstance(exc, SearchInterrupted):
                exc.counts = controller.counts()
            raise
        finally:
            try:
                controller.flush()
                records_file.write(controller.records())
                if tracker is not None:
                    session.track.drain()  # the completions' MLflow work still queued (a second Ctrl-C cuts it short)
                    failed = session.track.error is not None
                    tracker.end_search("FAILED" if failed and status == "FINISHED" else status)
                    session.track.check()  # a tracking failure is the search's error (--resume ends what it dropped)
            except (SearchInterrupted, KeyboardInterrupt):  # a second signal while closing: stop at once
                raise _stopped_at_once(stop, controller) from None
            finally:
                if session.events is not None:
                    session.events.close()

    records = controller.records()
    hv = log_hypervolume(records, ref_params, ref_ppl) if ref_params and ref_ppl else None
    return SearchResult(config.experiment, records, pareto_front(records), paths, hv, time.time() - t0)


__all__ = ["SearchResult", "quiet_libraries", "run_search"]
