"""Where a search keeps things on disk: the experiment folder, the controller journal, trial checkpoints,
Ray's results (a folder or a URI), and the records file that ``export`` reads without MLflow."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from squeezelstm.trainers.files import BackgroundWriter, atomic_write_text, json_safe

from ..controller import read_journal
from ..pareto import TrialRecord

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
        import pyarrow.fs  # Ray's dependency, loaded only for a URI storage

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
    """Atomically write the records (and search metadata) as JSON: what ``export`` reads without MLflow.

    The text is ``json.dumps(json_safe({"meta": ..., "records": [r.to_dict() ...]}))``'s, encoded a record at a
    time (no deep copy, and no single C call that holds the GIL for all of them: a background writer's caller
    keeps running); a record with a non-finite number goes through ``json_safe``."""
    def one(record: TrialRecord) -> str:
        try:
            return json.dumps(vars(record), default=str, allow_nan=False)
        except ValueError:  # NaN or inf somewhere: null, as strict JSON has it
            return json.dumps(json_safe(record.to_dict()), default=str, allow_nan=False)

    head = json.dumps(json_safe(meta or {}), default=str, allow_nan=False)
    atomic_write_text(path, f'{{"meta": {head}, "records": [{", ".join(one(r) for r in records)}]}}')


class RecordsFile:
    """The records file a search keeps for its users (``write_records``), written whole at most every
    ``every_s`` seconds while trials complete (``maybe_write``: it costs O(trials)) and at the end (``write``).

    ``writer``: ``maybe_write``'s writes run in its background thread (``records()`` is read on the caller's, so
    pass a cheap one: ``SearchController.records_view``); one that failed is raised by the next call."""

    def __init__(self, path: Path, meta: dict | None = None, every_s: float = 30.0,
                 writer: BackgroundWriter | None = None) -> None:
        self.path, self.meta, self.every_s, self.writer = Path(path), meta, float(every_s), writer
        self._at: float | None = None
        self._key = f"records:{self.path.resolve()}"

    def maybe_write(self, records: Callable[[], list[TrialRecord]]) -> bool:
        """Write ``records()`` if the last write is ``every_s`` old (or there was none); True if written (or
        handed to the writer)."""
        if self.writer is not None:
            self.writer.check(self._key)
        if self._at is not None and time.monotonic() - self._at < self.every_s:
            return False
        if self.writer is None:
            self.write(records())
        else:
            rows = list(records())
            self.writer.submit(self._key, lambda: write_records(self.path, rows, self.meta))
            self._at = time.monotonic()
        return True

    def write(self, records: list[TrialRecord]) -> None:
        """Write ``records`` now (the end of a search): after the writer's write of this file, if one runs."""
        if self.writer is not None:
            self.writer.drain(self._key, drop=True)  # superseded by this one; one that failed too
            with contextlib.suppress(Exception):
                self.writer.check(self._key)
        write_records(self.path, records, self.meta)
        self._at = time.monotonic()


def read_records(path: Path) -> tuple[dict, list[TrialRecord]]:
    """``(meta, records)`` from a file written by ``write_records``."""
    data = json.loads(Path(path).read_text())
    return data.get("meta", {}), [TrialRecord.from_dict(r) for r in data["records"]]


def read_live_records(paths: SearchPaths) -> tuple[dict, list[TrialRecord]]:
    """``(meta, records)`` of a running or ended search: the meta of its records file, the records as its
    controller's journal holds them now (the records file is rewritten only every so often while it runs)."""
    meta, records = read_records(paths.records_file)
    if paths.state_dir.is_dir():
        state = read_journal(paths.state_dir)
        if state.records:
            records = [state.records[n] for n in sorted(state.records)]
    return meta, records


__all__ = ["DEFAULT_STORAGE", "RECORDS_FILE", "RecordsFile", "SearchPaths", "check_writable", "has_state", "is_uri",
           "read_live_records", "read_records", "resolve_paths", "write_records"]
