"""``run_search``: one search (or the continuation of an interrupted one) on Ray Tune.

The search controller's journal (``<experiment dir>/controller``) is the single source of truth:
it is written the moment a trial is sampled, reported or completed, so a driver killed at any
point loses nothing. Resuming therefore does not replay Ray's own experiment snapshot (written
only every so often, it can lag behind and would re-run trials that had already finished);
instead every session is a fresh Ray experiment under ``<experiment dir>/ray``, whose searcher
first hands out again the trials the controller still has as running (same number, same config;
their trainer continues from its per-epoch checkpoint under ``<experiment dir>/trials``) and then
samples new ones until the requested number exists in total.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..samplers import DEFAULT_SAMPLER
from ..pareto import TrialRecord, pareto_front, records_dataframe
from ._driver_lock import hold as hold_driver_lock
from ._interrupt import SearchInterrupted, fit_until_signal

DEFAULT_STORAGE = "squeezelstm_runs"
RECORDS_FILE = "records.json"


@dataclass(frozen=True)
class SearchPaths:
    """Where a search keeps things: ``experiment_dir`` (local), ``state_dir`` (controller journal),
    ``trials_dir`` (trainer checkpoints per trial), ``ray_storage`` (Ray results: local or URI)."""

    experiment_dir: Path
    state_dir: Path
    trials_dir: Path
    ray_storage: str

    @property
    def records_file(self) -> Path:
        return self.experiment_dir / RECORDS_FILE


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


def is_uri(storage: str) -> bool:
    """True for ``s3://``-style URIs (handed to Ray); plain and ``file://`` paths are local."""
    return "://" in storage and not storage.startswith("file://")


def resolve_paths(experiment: str, storage: str | os.PathLike | None = None) -> SearchPaths:
    """Paths of ``experiment`` under ``storage`` (default ``./squeezelstm_runs``).

    A URI storage keeps Ray's results there; the controller state and trial checkpoints then live
    under ``./squeezelstm_runs/<experiment>`` on the driver (use a shared path, not a URI, when
    trials run on several machines and must resume from checkpoints).
    """
    if not isinstance(experiment, str) or not experiment or "/" in experiment or experiment in (".", ".."):
        raise ValueError(f"experiment must be a plain non-empty name, got experiment={experiment!r}")
    storage = DEFAULT_STORAGE if storage is None else os.fspath(storage)
    if is_uri(storage):
        local = Path(DEFAULT_STORAGE).resolve() / experiment
        return SearchPaths(local, local / "controller", local / "trials", storage.rstrip("/") + f"/{experiment}")
    if storage.startswith("file://"):
        storage = storage[len("file://"):]
    local = Path(storage).expanduser().resolve() / experiment
    return SearchPaths(local, local / "controller", local / "trials", str(local / "ray"))


def check_writable(paths: SearchPaths) -> None:
    """One-line PermissionError/ValueError before any trial when the storage cannot be written."""
    for folder in (paths.experiment_dir, paths.state_dir, paths.trials_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{uuid.uuid4().hex}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise PermissionError(f"storage is not writable: {folder} ({exc.strerror or exc})") from None
    if is_uri(paths.ray_storage):
        import pyarrow.fs

        try:
            fs, path = pyarrow.fs.FileSystem.from_uri(paths.ray_storage)
            fs.create_dir(path, recursive=True)
        except Exception as exc:  # pyarrow raises a zoo of types for bad URIs and credentials
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"storage {paths.ray_storage} is not usable: {first}") from None


def has_state(paths: SearchPaths) -> bool:
    """Whether an earlier search left controller state under these paths."""
    return paths.state_dir.is_dir() and any(paths.state_dir.iterdir())


def write_records(path: Path, records: list[TrialRecord], meta: dict | None = None) -> None:
    """Atomically write the records (and search metadata) as JSON: what ``export`` reads without MLflow."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    data = _finite({"meta": meta or {}, "records": [r.to_dict() for r in records]})
    tmp.write_text(json.dumps(data, default=str, allow_nan=False))
    os.replace(tmp, path)


def read_records(path: Path) -> tuple[dict, list[TrialRecord]]:
    """``(meta, records)`` from a file written by ``write_records``."""
    data = json.loads(Path(path).read_text())
    return data.get("meta", {}), [TrialRecord.from_dict(r) for r in data["records"]]


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as None: strict JSON that every reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _validate(trials: int, cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None,
              max_failures: int, epochs: int | None) -> None:
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got trials={trials!r}")
    if not isinstance(cpus_per_trial, (int, float)) or not cpus_per_trial > 0:
        raise ValueError(f"cpus_per_trial must be > 0, got cpus_per_trial={cpus_per_trial!r}")
    if not isinstance(gpus_per_trial, (int, float)) or not 0 <= gpus_per_trial:
        raise ValueError(f"gpus_per_trial must be >= 0 (fractions such as 0.25 share a GPU), got gpus_per_trial={gpus_per_trial!r}")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise ValueError(f"gpus_per_trial above 1 must be a whole number, got gpus_per_trial={gpus_per_trial!r}")
    if max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1):
        raise ValueError(f"max_concurrent must be an integer >= 1, got max_concurrent={max_concurrent!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise ValueError(f"epochs must be a positive integer, got epochs={epochs!r}")
    if not isinstance(max_failures, int) or max_failures < 0:
        raise ValueError(f"max_failures must be an integer >= 0, got max_failures={max_failures!r}")


def _reference_point(space: Any, controller: Any) -> tuple[float | None, float | None, float | None]:
    """``(ref_params, ref_ppl, optimal_ppl)``: fixed for the whole search so hypervolumes compare.

    The reference is the budget's ``max_params`` and the vocabulary size (the perplexity of a model
    that learned nothing); without a parameter budget there is no hypervolume.
    """
    ref_params = getattr(space, "max_params", None)
    vocab = getattr(controller, "vocab_size", None)
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
    import socket

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


def _quiet_ray() -> None:
    # Ray Tune's console reporting: off (we print our own one-line events); its loggers: errors only
    # (a failed trial's traceback is still written to the trial's error file under the Ray folder).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # MLflow and its migrations announce every new sqlite store at INFO: noise next to progress lines.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_search(space: Any, *, experiment: str, storage: str | os.PathLike | None = None, **kwargs: Any) -> SearchResult:
    """``_run_search`` as the only driver of ``experiment``: a second one is refused with ``DriverRunning``."""
    paths = resolve_paths(experiment, storage)
    with hold_driver_lock(paths.experiment_dir, experiment, on_os_error=lambda: check_writable(paths)):
        return _run_search(space, experiment=experiment, storage=storage, **kwargs)


def _run_search(
    space: Any,
    *,
    trials: int,
    experiment: str,
    epochs: int | None = None,
    sampler: str = DEFAULT_SAMPLER,
    pruner: str | None = None,
    address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    max_concurrent: int | None = None,
    max_failures: int = 0,
    storage: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    resume: bool = False,
    seed: int = 0,
    progress: Callable[[Any], None] | None = None,
    pruner_kwargs: dict | None = None,
) -> SearchResult:
    """Run ``trials`` trials of ``space`` (a ``SearchSpace``, a space file or a shipped space name) on Ray Tune.

    Returns the records of every trial of the experiment (over all sessions when resuming) and its
    Pareto front. ``resume=True`` continues the experiment's earlier, interrupted search: finished
    trials are kept, unfinished ones continue from their last checkpoint, and new ones are sampled
    until ``trials`` exist in total. ``progress`` receives a ``SearchEvent`` per trial event.
    ``track=False`` (or no MLflow adapter installed) skips MLflow. ``pruner_kwargs`` go to the
    pruner (``squeezelstm.search.pruners.make_pruner``).
    """
    _validate(trials, cpus_per_trial, gpus_per_trial, max_concurrent, max_failures, epochs)
    from ..controller import SAMPLERS, SearchController
    from ..pruners import PRUNERS
    from ..space import SearchSpace, load_space

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler={sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    if pruner is not None and pruner not in PRUNERS:
        raise ValueError(f"unknown pruner={pruner!r}; valid pruners: {', '.join(PRUNERS)}")
    if not isinstance(space, SearchSpace):
        space = load_space(space)
    paths = resolve_paths(experiment, storage)
    existed = has_state(paths)
    if existed and not resume:
        raise ValueError(
            f"experiment {experiment!r} already exists in {paths.experiment_dir}; "
            "pass --resume to continue it or choose another --experiment"
        )
    if resume and not existed:
        raise ValueError(f"nothing to resume: no search state for experiment {experiment!r} in {paths.experiment_dir}")
    if address:
        _check_reachable(address)
    check_writable(paths)
    # An unreachable MLflow store is reported before anything of the experiment is created.
    _quiet_ray()
    tracker = _make_tracker(track, tracking_uri, experiment)
    _quiet_ray()  # again after MLflow's import, which sets its own logger levels
    if tracker is not None:
        tracker.check()

    controller_kwargs: dict[str, Any] = dict(sampler=sampler, seed=seed, epochs=epochs,
                                              state_dir=paths.state_dir, study_name=experiment)
    if pruner is not None:
        controller_kwargs["pruner"] = pruner
    controller_kwargs.update(pruner_kwargs or {})
    try:
        controller = SearchController(space, **controller_kwargs)
    except BaseException:
        if not existed:  # a bad sampler/pruner argument must not leave a half-made experiment behind
            shutil.rmtree(paths.state_dir, ignore_errors=True)
        raise
    ref_params, ref_ppl, optimal_ppl = _reference_point(space, controller)
    # Build the compiled recurrences here, once and with its message on the user's terminal, rather than
    # in every trial process at once (they would queue on the build lock with their clocks running).
    from squeezelstm.spaces._kernels import kernels

    kernels()

    try:
        started_ray = _start_ray(address, cpus_per_trial)
    except BaseException:
        _forget_if_empty(paths, existed, controller)
        raise
    try:
        return _fit(space, controller, paths, tracker, experiment=experiment, trials=trials, resume=resume,
                    address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, max_concurrent=max_concurrent,
                    max_failures=max_failures, progress=progress, seed=seed, sampler=sampler, pruner=pruner,
                    epochs=epochs, refs=(ref_params, ref_ppl, optimal_ppl))
    except BaseException:
        _forget_if_empty(paths, existed, controller)
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _forget_if_empty(paths: SearchPaths, existed: bool, controller: Any) -> None:
    """A new search that failed before its first trial leaves nothing behind (so it needs no --resume)."""
    if not existed and not controller.records():
        shutil.rmtree(paths.state_dir, ignore_errors=True)


def _make_tracker(track: bool, tracking_uri: str | None, experiment: str) -> Any:
    if not track:
        return None
    try:
        from ..tracking import SearchTracker
    except ImportError:
        return None
    return SearchTracker(tracking_uri, experiment)


def _trial_name(trial: Any) -> str:
    return f"trial_{int(trial.config['number']):04d}"


def _fit(space: Any, controller: Any, paths: SearchPaths, tracker: Any, *, experiment: str, trials: int,
         resume: bool, address: str | None, cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None,
         max_failures: int, progress: Callable | None, seed: int, sampler: str, pruner: str | None,
         epochs: int | None, refs: tuple) -> SearchResult:
    import ray
    from ray import tune

    from ._ray import (
        ControllerScheduler,
        ControllerSearcher,
        SearchSession,
        register_session,
        release_session,
        run_trial,
    )
    from ._threads import ray_nodes, trial_threads

    available = ray.cluster_resources()
    if not address and not os.environ.get("RAY_ADDRESS"):
        # A local Ray never grows: a trial asking for more than it has would wait forever.
        for key, want in (("CPU", cpus_per_trial), ("GPU", gpus_per_trial)):
            if want > available.get(key, 0):
                raise ValueError(f"each trial asks for {want:g} {key}(s) but this machine's Ray has "
                                 f"{available.get(key, 0):g}; lower --{key.lower()}s-per-trial")
    if max_concurrent is None:
        max_concurrent = max(1, int(available.get("CPU", 1) // cpus_per_trial))
    t0 = time.time()
    ref_params, ref_ppl, optimal_ppl = refs
    meta = {"experiment": experiment, "space": getattr(space, "name", None), "space_source": getattr(space, "source", None),
            "trials": trials, "sampler": sampler, "pruner": pruner, "seed": seed, "epochs": epochs,
            "ref_params": ref_params, "ref_ppl": ref_ppl, "optimal_ppl": optimal_ppl,
            "trials_dir": str(paths.trials_dir)}
    if tracker is not None:
        tracker.start_search(params={k: v for k, v in meta.items() if v is not None},
                             tags={"space": str(meta["space"])}, resume=resume)
        if resume:
            tracker.end_stale_trials(controller.records())

    unfinished = controller.unfinished()
    session = SearchSession(
        controller=controller, trials=trials, trials_dir=str(paths.trials_dir),
        threads=trial_threads(cpus_per_trial, gpus_per_trial, ray_nodes()), tracker=tracker, progress=progress,
        ref_params=ref_params, ref_ppl=ref_ppl, optimal_ppl=optimal_ppl, reissue=list(unfinished),
        on_change=lambda: write_records(paths.records_file, controller.records(), meta),
    )
    to_run = len(unfinished) + max(0, trials - len(controller.records()))
    token = register_session(session)
    status = "FINISHED"
    try:
        if to_run > 0:
            resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
            sessions = paths.ray_storage
            name = f"session-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            tuner = tune.Tuner(
                tune.with_resources(run_trial, resources),
                tune_config=tune.TuneConfig(
                    search_alg=ControllerSearcher(token), scheduler=ControllerScheduler(token),
                    num_samples=to_run, max_concurrent_trials=max_concurrent, reuse_actors=True,
                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                ),
                run_config=tune.RunConfig(
                    name=name, storage_path=sessions, verbose=0,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                ),
            )
            fit_until_signal(tuner.fit)  # SearchInterrupted on Ctrl-C / SIGTERM; running trials keep their checkpoints
            if session.error is not None:
                raise session.error
    except BaseException as exc:
        status = "KILLED"
        if isinstance(exc, SearchInterrupted):
            exc.counts = controller.counts()
        raise
    finally:
        release_session(token)
        records = controller.records()
        write_records(paths.records_file, records, meta)
        if tracker is not None:
            tracker.end_search(status)

    records = controller.records()
    hv = None
    if ref_params and ref_ppl:
        from ..pareto import log_hypervolume

        hv = log_hypervolume(records, ref_params, ref_ppl)
    return SearchResult(experiment, records, pareto_front(records), paths, hv, time.time() - t0)
