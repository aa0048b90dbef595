"""MLflow adapter: one parent run per search, one nested child run per trial, the Pareto front on the parent.

With ``_runs.py`` (tags, batched logging, finding runs), ``_store.py`` (URIs, the client) and ``_read.py``
(``load_search``), the only modules of the search that import MLflow. Every call goes through an explicit
``MlflowClient(tracking_uri)`` (never the global fluent state), so a ``TrialLogger`` pickled to a
Ray worker on another node logs straight to the tracking server, and artifacts travel through the
server's artifact proxy (``mlflow server --serve-artifacts``) rather than a shared disk.

Run identity lives in tags, so a resumed search (or ``squeezelstm pareto`` on another machine)
finds everything again from the store alone:

- parent: ``squeezelstm.role=search``, ``squeezelstm.search=<experiment>``
- child: ``mlflow.parentRunId=<parent>``, ``squeezelstm.trial=<number>``, ``squeezelstm.status``,
  ``squeezelstm.family``, ``squeezelstm.config`` (JSON), ``squeezelstm.sampled`` (JSON) and
  ``pareto=true`` while the trial is on the front.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from squeezelstm.trainers.files import BackgroundWriter

from ..pareto import STATUSES, TrialRecord
from ._front import ParentFront
from ._runs import (_MAX_TAG_VALUE, CONFIG_TAG, FAMILY_TAG, FINAL_PREFIX, PARENT_TAG, REF_TAGS, ROLE_TAG,
                     SAMPLED_TAG, SEARCH_CONFIG_FILE, SEARCH_TAG, SIZE_TAG, STATUS_TAG, STEP0_METRICS, TRIAL_TAG, _find_child,
                     _log, _param_value, _scalar_metrics, child_runs, flatten,
                     quote_filter_value, search_all_runs)
from ._store import TrackingUnavailable, check_tracking_uri, mlflow_client, quick_http, resolve_tracking_uri, sqlite_path
from ._ui import mark_experiment_kind

# Writes the front's files (tables, report) into a folder and returns their names; the CLI wires in the
# dashboards' ``write_front_files``, so this adapter never imports the dashboards.
FrontFiles = Callable[..., list[str]]
_MLFLOW_RUN_STATUS = {"finished": "FINISHED", "pruned": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store live beside the database, not in whatever the working folder is."""
    db = sqlite_path(uri)
    if db is None:
        return None  # a server decides (mlflow-artifacts:/ when it proxies artifacts)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment) or "experiment"
    return (db.resolve().parent / "mlartifacts" / safe).as_uri()


class TrialLogger:
    """Logs one trial to its nested child run; small and picklable, so a Ray worker logs from its own node."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, number: int) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.number = int(number)
        self.run_id: str | None = None
        self._client = None
        self._pending: list[tuple[int, dict[str, float]]] = []  # epochs the store has not taken yet

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None  # clients hold sessions/engines; each process makes its own
        return state

    @property
    def client(self):
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    def _ensure_run(self, family: str | None = None, *, logged: bool = True) -> str:
        """The child run of this trial: found under the parent (resume, retries) or created once.

        ``logged=False``: the caller logs no epochs, so the points already logged are not read back."""
        if self.run_id is not None:
            return self.run_id
        run = _find_child(self.client, self.experiment_id, self.parent_run_id, self.number)
        if run is None:
            tags = {PARENT_TAG: self.parent_run_id, TRIAL_TAG: str(self.number), STATUS_TAG: "running"}
            if family:
                tags[FAMILY_TAG] = family
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"trial-{self.number:04d}")
        else:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            # A resumed or retried trial replays its checkpoint's epochs: points already logged
            # (by the attempt before the driver or node died) are not logged a second time.
            self._logged = set() if not logged else {(key, m.step) for key in run.data.metrics
                            if key not in STEP0_METRICS and not key.startswith(FINAL_PREFIX)
                            for m in self.client.get_metric_history(run.info.run_id, key)}
        self.run_id = run.info.run_id
        return self.run_id

    def start(self, spec_config: dict, params: int, flops: int, sampled: dict, *, recurrent_params: int = 0,
              size: str = "total") -> None:
        """Find-or-create the child run and log the config (params, tag, artifact), every size at step 0
        (``params``, ``recurrent_params``, ``flops``) and the search's size objective as a tag."""
        family = str(spec_config.get("model", {}).get("cell", "")) or None
        run_id = self._ensure_run(family)
        run = self.client.get_run(run_id)
        existing = run.data.params
        flat = {k: v for k, v in flatten(spec_config).items() if k not in existing}
        config_json = json.dumps(spec_config, sort_keys=True, default=str)
        tags = {STATUS_TAG: "running", SAMPLED_TAG: json.dumps(sampled, sort_keys=True, default=str), SIZE_TAG: size}
        if family:
            tags[FAMILY_TAG] = family
        if len(config_json) <= _MAX_TAG_VALUE:
            tags[CONFIG_TAG] = config_json
        # a re-run trial (resume, Ray retry) keeps its single step-0 point
        step0 = {} if "params" in run.data.metrics else {"params": params, "recurrent_params": recurrent_params,
                                                         "flops": flops}
        _log(self.client, run_id, params=flat, metrics=step0, step=0, tags=tags)
        self.client.log_dict(run_id, spec_config, "config.json")

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        """One learning-curve point per metric (``train_ppl``, ``valid_ppl``, ``tokens_per_s``, ``lr``...)."""
        values = {k: v for k, v in _scalar_metrics(metrics).items() if k != "epoch"}
        if values:
            self.__dict__.setdefault("_pending", []).append((int(epoch), values))
        # The server down past MLflow's own retries must not stop training or lose the point:
        # it stays pending and goes out with the next epoch, or at ``finish`` (which fails loudly).
        self._flush(strict=False)

    def _flush(self, *, strict: bool) -> None:
        pending = self.__dict__.setdefault("_pending", [])
        while pending:
            epoch, values = pending[0]
            try:
                run_id = self._ensure_run()
                logged = self.__dict__.get("_logged") or set()
                values = {k: v for k, v in values.items() if (k, epoch) not in logged}
                if values:
                    _log(self.client, run_id, metrics=values, step=epoch)
            except Exception as exc:  # noqa: BLE001 - MLflow raises many types for an unreachable store
                if strict:
                    raise
                print(f"squeezelstm: trial {self.number}: MLflow did not take epoch {epoch} "
                      f"({type(exc).__name__}); kept, sent again later", file=sys.stderr, flush=True)
                return
            pending.pop(0)

    def finish(self, status: str, result: dict) -> None:
        """Final metrics (``final_valid_ppl``...), the status tag, and the run ended."""
        if status not in STATUSES or status == "running":
            raise ValueError(f"status must be one of finished/pruned/failed/diverged, got status={status!r}")
        self._flush(strict=True)
        run_id = self._ensure_run()
        finals = {f"{FINAL_PREFIX}{k}": v for k, v in _scalar_metrics(result or {}).items()
                  if k not in ("epoch", "number")}
        steps = [int(e.get("epoch", 0)) for e in (result or {}).get("history", []) if isinstance(e, dict)]
        _log(self.client, run_id, metrics=finals, step=max(steps, default=0), tags={STATUS_TAG: status})
        self.client.set_terminated(run_id, status=_MLFLOW_RUN_STATUS[status])


class SearchTracker:
    """Driver-side MLflow adapter of one search: the parent run, its children, and the Pareto front on it."""

    def __init__(self, tracking_uri: str | None, experiment: str, front_files: FrontFiles | None = None,
                 report_every_s: float = 30.0, writer: BackgroundWriter | None = None) -> None:
        """``front_files(records, folder, *, title, optimal_ppl, hypervolume_history, report) -> [names]`` writes
        the front's files that ``update_front`` logs on the parent run (none without it): at most every
        ``report_every_s`` seconds (the HTML report's plotly work and the uploads grow with the search), and
        once more by ``end_search`` if a write was skipped. ``writer``: those periodic writes run in its
        background thread, with a client of their own (``update_front`` does not wait for them); one that failed
        is raised by the next ``end_trial``, ``update_front`` or ``end_search``, as an inline one would be."""
        if not isinstance(experiment, str) or not experiment.strip():
            raise ValueError(f"experiment must be a non-empty name, got experiment={experiment!r}")
        if isinstance(report_every_s, bool) or not isinstance(report_every_s, (int, float)) or not report_every_s >= 0:
            raise ValueError(f"report_every_s must be a number >= 0, got report_every_s={report_every_s!r}")
        self.report_every_s = float(report_every_s)
        self._files_at: float | None = None  # when the front's files were last written (time.monotonic)
        self._files_due: tuple | None = None  # (records source, optimal_ppl, report) of a skipped write
        self._files_last: tuple | None = None  # the same, of the last write handed to the writer
        self.writer = writer
        self._key = f"front:{experiment}:{id(self)}"
        self._writer_client = None  # the writer thread's own MlflowClient
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.front_files = front_files
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client = None
        self._front: ParentFront | None = None  # the parent's front as written, in memory (start_search)
        self._ref_logged: dict | None = None

    @property
    def client(self):
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    def check(self) -> None:
        """One-line ``TrackingUnavailable`` (a ConnectionError and ValueError) if the store cannot be used."""
        check_tracking_uri(self.tracking_uri)
        if self.tracking_uri.startswith(("http://", "https://")):
            with quick_http():
                try:
                    self.client.get_experiment_by_name(self.experiment)
                except Exception as exc:  # noqa: BLE001 - any failure here means "cannot track"
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise TrackingUnavailable(f"tracking server {self.tracking_uri} is unusable: {first}") from None

    def _experiment_id(self) -> str:
        if self.experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                self.experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=_artifact_location(self.tracking_uri, self.experiment))
            else:
                if found.lifecycle_stage != "active":
                    raise ValueError(f"experiment {self.experiment!r} is deleted in {self.tracking_uri}; restore or rename it")
                self.experiment_id = found.experiment_id
            mark_experiment_kind(self.client, self.experiment_id)
        return self.experiment_id

    def start_search(self, *, params: dict, tags: dict, resume: bool = False, config: dict | None = None) -> str:
        """Open the parent run and return its id; ``resume`` reopens the experiment's latest parent run.

        ``config`` (a ``SearchConfig.to_dict()``) is kept on the run as ``search_config.json``: it rebuilds the search.
        """
        experiment_id = self._experiment_id()
        run = None
        if resume:
            parents = search_all_runs(self.client, experiment_id,
                                  f"tags.`{ROLE_TAG}` = 'search' and tags.`{SEARCH_TAG}` = '{quote_filter_value(self.experiment)}'")
            run = max(parents, key=lambda r: r.info.start_time or 0) if parents else None
        all_tags = {**code_version(), **{str(k): v for k, v in (tags or {}).items()},
                    ROLE_TAG: "search", SEARCH_TAG: self.experiment}
        if run is None:
            run = self.client.create_run(experiment_id, tags={k: str(v) for k, v in all_tags.items()},
                                         run_name=f"search-{self.experiment}")
            existing: dict[str, str] = {}
            reopened = False
        else:
            reopened = True
            self.client.update_run(run.info.run_id, status="RUNNING")
            existing = run.data.params
        self.parent_run_id = run.info.run_id
        # params are immutable in MLflow: on resume only new keys are added, changes go in as tags
        new = {str(k): v for k, v in flatten(params or {}).items() if str(k) not in existing}
        changed = {f"resume.{k}": _param_value(v) for k, v in flatten(params or {}).items()
                   if str(k) in existing and existing[str(k)] != _param_value(v)}
        _log(self.client, self.parent_run_id, params=new, tags={**all_tags, **changed})
        if config is not None:
            self.client.log_dict(self.parent_run_id, config, SEARCH_CONFIG_FILE)
        self._front = ParentFront(self.client, experiment_id, self.parent_run_id, self.experiment,
                                  run.info.start_time, resumed=reopened)
        self._ref_logged = None
        return self.parent_run_id

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("start_search() must be called before logging trials")
        return self.parent_run_id

    def trial_logger(self, number: int) -> TrialLogger:
        """A picklable logger for trial ``number``'s child run (created on its ``start``)."""
        return TrialLogger(self.tracking_uri, self._experiment_id(), self._require_parent(), number)

    def end_trial(self, record: TrialRecord) -> None:
        """Driver side, authoritative: the child carries the record's final status and metrics, and is ended.

        A trial that never reached a worker (failed at start) still gets its child run here.
        """
        parent = self._require_parent()
        self._check_writer()
        logger = TrialLogger(self.tracking_uri, self._experiment_id(), parent, record.number)
        logger._client = self.client
        front = self._front
        logger.run_id = front.runs.get(record.number) if front is not None else None  # no search for a known run
        run_id = logger._ensure_run(record.family, logged=False)  # it logs no epochs: one search, no read-back
        if front is not None:
            front.note_run(record.number, run_id)
        run = self.client.get_run(run_id)
        if record.config and CONFIG_TAG not in run.data.tags:
            logger.start(record.config, record.params, record.flops, record.sampled,
                         recurrent_params=record.recurrent_params, size=record.size)
        elif "params" not in run.data.metrics:
            _log(self.client, run_id, metrics={"params": record.params, "recurrent_params": record.recurrent_params,
                                               "flops": record.flops}, step=0)
        if record.status == "running":
            return
        result = {"valid_ppl": record.valid_ppl, "test_ppl": record.test_ppl,
                  "history": record.history}
        logger.finish(record.status, {k: v for k, v in result.items() if v is not None})
        if front is not None:
            front.add(record)  # taken into the front by the next update_front

    def end_stale_trials(self, records: list[TrialRecord]) -> list[int]:
        """On resume: end the child runs the controller has completed but MLflow still shows running.

        A driver killed between completing a trial and ending its run leaves that run RUNNING, and
        the trial is never run again to end it. Returns the trial numbers brought up to date.
        """
        children = child_runs(self.client, self._experiment_id(), self._require_parent())
        for number, run in children.items():
            self._front.note_run(number, run.info.run_id)
        stale = [r for r in records if r.status != "running" and (
            r.number not in children or children[r.number].info.status == "RUNNING"
            or children[r.number].data.tags.get(STATUS_TAG) == "running")]
        for record in stale:
            self.end_trial(record)
        return [r.number for r in stale]

    def update_front(self, records: Sequence[TrialRecord] | Callable[[], Sequence[TrialRecord]], *, ref_params: float,
                     ref_ppl: float, optimal_ppl: float | None = None, report: bool = True) -> None:
        """Bring the parent's front up to date: pareto tags, hypervolume steps, description, ``front_files``' files.

        Call it after every closed trial (after ``end_trial``), with every record so far or a function that
        gives them (the runner passes ``controller.records``: it is called only when the whole list is needed,
        the first time and when the files are due). Only what changed is written: the tags of the trials
        that entered or left the front, one hypervolume step per finished trial, the description when the
        front changed (``_front.ParentFront``). The files (the front's CSV and JSON, and the HTML report
        unless ``report=False``) are written at most every ``report_every_s`` seconds; ``end_search`` writes
        the ones skipped last.
        """
        if ref_params <= 0 or ref_ppl <= 0:
            raise ValueError(f"reference point must be positive, got ref_params={ref_params}, ref_ppl={ref_ppl}")
        parent = self._require_parent()
        self._check_writer()
        given = None if callable(records) else list(records)
        source = records if callable(records) else (lambda: given)
        fetched: list[list[TrialRecord]] = []

        def once() -> list[TrialRecord]:  # every record, at most once a call
            if not fetched:
                fetched.append(list(source()))
            return fetched[0]

        self._log_reference(self.client, parent, ref_params, ref_ppl, optimal_ppl)
        self._front.sync(given, (float(ref_params), float(ref_ppl)), once)
        if self.front_files is None:
            return
        if self._files_at is not None and time.monotonic() - self._files_at < self.report_every_s:
            skipped_report = report or (self._files_due is not None and self._files_due[-1])
            self._files_due = (source, optimal_ppl, skipped_report)  # end_search asks the source again
            return
        self._write_files(once, optimal_ppl, report)

    def _write_files(self, source: Callable[[], Sequence[TrialRecord]], optimal_ppl: float | None,
                     report: bool, *, now: bool = False) -> None:
        """The front's files from ``source()``'s records; by the writer (the records and the hypervolume history
        read here, on the caller's thread, the files built and uploaded on the writer's) unless ``now``."""
        self._files_at, self._files_due = time.monotonic(), None
        records, parent = list(source()), self._require_parent()
        history = list(self._front.history) if report else None
        if self.writer is None or now:
            self._upload_files(self.client, parent, records, optimal_ppl, report, history)
            return
        if self._writer_client is None:
            # Its own client keeps ``self.client`` to the caller's thread. Both reach the store MLflow caches per
            # URI, which is made for threads (the tracking server shares it): the SQLAlchemy store opens a session
            # a call from its pool (SQLite: pooled connections any thread may use, writers queue on the database's
            # lock, busy_timeout 20 s);
            # the REST store shares a requests session (urllib3's pool is thread-safe).
            self._writer_client = mlflow_client(self.tracking_uri)
        self._files_last = (source, optimal_ppl, report)
        client = self._writer_client
        self.writer.submit(self._key, lambda: self._upload_files(client, parent, records, optimal_ppl, report, history))

    def _upload_files(self, client, parent: str, records: list[TrialRecord], optimal_ppl: float | None, report: bool,
                      history: list | None) -> None:
        with tempfile.TemporaryDirectory(prefix="squeezelstm-front-") as tmp:
            names = self.front_files(records, Path(tmp), title=f"Pareto front of search {self.experiment}",
                                     optimal_ppl=optimal_ppl, report=report, hypervolume_history=history)
            for name in names:
                client.log_artifact(parent, str(Path(tmp) / name))

    def _check_writer(self) -> None:
        """Raise the error a background write of the front's files ended with (the tracking server gone...)."""
        if self.writer is not None:
            self.writer.check(self._key)

    def _log_reference(self, client, parent: str, ref_params: float, ref_ppl: float,
                       optimal_ppl: float | None) -> None:
        """The reference point as params (the first one logged) and tags (the current one); once per change."""
        values = {"ref_params": float(ref_params), "ref_ppl": float(ref_ppl)}
        if optimal_ppl is not None:
            values["optimal_ppl"] = float(optimal_ppl)
        if values == self._ref_logged:
            return
        existing = client.get_run(parent).data.params
        params = {f"hypervolume.{k}": v for k, v in values.items() if f"hypervolume.{k}" not in existing}
        _log(client, parent, params=params, tags={REF_TAGS[k]: repr(v) for k, v in values.items()})
        self._ref_logged = values

    def end_search(self, status: str = "FINISHED") -> None:
        """End the parent run (``FINISHED``, ``FAILED`` or ``KILLED``), after writing the front's files skipped last.

        With a writer: its write still queued is dropped (the one written here, now, supersedes it), the one it
        is running waited for, and one that failed raised (the parent run is still ended)."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, got status={status!r}")
        try:
            if self.writer is not None:
                if self.writer.drain(self._key, drop=True) and self._files_due is None:
                    self._files_due = self._files_last
                self._check_writer()
            if self._files_due is not None:  # the files show the search as it ended
                source, optimal_ppl, report = self._files_due
                self._write_files(source, optimal_ppl, report, now=True)
        finally:  # the parent run is ended even if the report fails (or a second Ctrl-C cuts it short)
            self.client.set_terminated(self._require_parent(), status=status)


def code_version() -> dict[str, str]:
    """Tags naming the code that ran a search: the package version and, in a git checkout, the commit."""
    tags = {}
    try:
        tags["squeezelstm.version"] = version("squeezelstm")
    except PackageNotFoundError:
        pass
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5)
        if done.returncode == 0 and done.stdout.strip():
            tags["mlflow.source.git.commit"] = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass  # an installed wheel, or no git: the version tag has to do
    return tags
