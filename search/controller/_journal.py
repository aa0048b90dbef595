"""The controller's records on disk: a whole snapshot now and then, and one appended line per event between
(and ``controller.json``, the settings a resumed search must match: ``check_meta``).

Rewriting every record on every report and completion costs O(trials) an event. Instead each event (a trial
sampled, an epoch reported, a trial closed, an over-budget sample rejected) appends one JSON line to
``records.jsonl``: the changed record as it now is, whether the controller decided to prune it, and the count
of rejected samples. At most every ``snapshot_every_s`` seconds, and on ``snapshot()`` (the end of a search, an
interruption), the whole state is written atomically to ``records.json`` (the same file, in the same format,
that a search wrote before the log existed) and the log is emptied.

Reading is the snapshot, then the log's lines in order. A line is the record's whole state, so replaying a
line the snapshot already holds changes nothing: a driver killed between writing the snapshot and emptying
the log resumes to the same state. A driver killed mid-line (SIGKILL, a full disk) leaves a torn last line:
it is dropped (the event it carried is lost, as the rewrite it replaces lost it), and the next controller
over the folder compacts the state before it appends anything.

With a ``BackgroundWriter`` (a Ray search) the periodic snapshot is written off the caller's thread: the log
is closed and renamed to the next segment (``records.jsonl.1``, ``.2``, ...), new events go to a fresh log, and
the writer writes the state as it was at the rename (shallow copies of the records, taken under the
controller's lock), then deletes the segments it covers. Reading is the snapshot, the segments in order, then
the log; a driver killed at any point of that reads back to the same state, as above.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from squeezelstm.trainers.files import BackgroundWriter, atomic_write_text

from ..pareto import TrialRecord

SNAPSHOT_FILE = "records.json"
LOG_FILE = "records.jsonl"
_STATE_VERSION = 1


@dataclass
class JournalState:
    """What the journal holds: every launched trial's record by number, the trials decided pruned, the rejects."""

    records: dict[int, TrialRecord] = field(default_factory=dict)
    prune_decided: set[int] = field(default_factory=set)
    rejected: int = 0

    def to_dict(self) -> dict:
        """The snapshot's content (``records.json``)."""
        return {"version": _STATE_VERSION, "records": [self.records[n].to_dict() for n in sorted(self.records)],
                "prune_decided": sorted(self.prune_decided), "rejected": self.rejected}

    def copy(self) -> JournalState:
        """A copy a background writer may read while the controller goes on: shallow copies of the records (cheap;
        they share their config and history, which the controller replaces and never changes in place)."""
        return JournalState({n: shallow(r) for n, r in self.records.items()}, set(self.prune_decided),
                            int(self.rejected))

    def to_json(self) -> str:
        """``json.dumps(jsonable(self.to_dict()))``, the same text, encoded a record at a time: no deep copy, and
        no single C call that holds the GIL for the whole state (a background writer's caller keeps running)."""
        records = ", ".join(json.dumps(vars(self.records[n]), default=_default) for n in sorted(self.records))
        return (f'{{"version": {_STATE_VERSION}, "records": [{records}], '
                f'"prune_decided": {json.dumps(sorted(self.prune_decided))}, "rejected": {int(self.rejected)}}}')


def shallow(record: TrialRecord) -> TrialRecord:
    """A copy of ``record`` that shares its config, sampled values and history (a quarter of ``copy.copy``'s cost:
    4 ms for 5,000 records)."""
    out = object.__new__(TrialRecord)
    out.__dict__.update(record.__dict__)
    return out


def plain(value: Any) -> Any:
    """JSON-safe scalar (numpy and torch scalars become Python numbers)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def _default(obj: Any) -> Any:
    return plain(obj) if hasattr(obj, "item") else str(obj)


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON would give it back (numpy scalars as numbers, anything else unknown as its ``str``)."""
    return json.loads(json.dumps(obj, default=_default))


def check_meta(folder: Path, meta: dict) -> None:
    """Write ``meta`` (the controller's settings) to ``controller.json``; ValueError if the folder holds a search
    with another space, study, epochs or size objective (a resume must not mix two searches' records)."""
    path = folder / "controller.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"controller state {path} is not valid JSON") from None
        old.setdefault("size", "total")  # written before the size objective was a setting
        for key in ("space", "study_name", "epochs", "size"):
            if old.get(key) != meta[key]:
                raise ValueError(f"state_dir {folder} holds a search with a different {key}; "
                                 "use a new experiment name or the same settings to resume")
    atomic_write_text(path, json.dumps(meta, indent=1))


def read_journal(folder: str | os.PathLike) -> JournalState:
    """The state in ``folder``: its snapshot, then its log's lines (a torn last line dropped). Writes nothing.

    ValueError naming the file when the snapshot or a line before the last is not what the journal writes.
    """
    folder = Path(folder)
    state = JournalState()
    snapshot = folder / SNAPSHOT_FILE
    if snapshot.exists():
        try:
            data = json.loads(snapshot.read_text())
            state.records = {int(r["number"]): TrialRecord.from_dict(r) for r in data["records"]}
            state.prune_decided = {int(n) for n in data.get("prune_decided", [])}
            state.rejected = int(data.get("rejected", 0))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"controller records {snapshot} are unreadable: {exc}") from None
    for log in [folder / f"{LOG_FILE}.{k}" for k in segments(folder)] + [folder / LOG_FILE]:
        if not log.exists():
            continue
        lines = log.read_bytes().split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                apply_event(state, json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
                if i == len(lines) - 1:  # the last line, not ended by a newline: torn by a killed driver
                    break
                raise ValueError(f"controller records {log} are unreadable at line {i + 1}: {exc}") from None
    return state


def segments(folder: Path) -> list[int]:
    """The numbers of the log segments in ``folder`` (``records.jsonl.K``: closed logs a background snapshot has
    not covered yet), in order."""
    prefix = LOG_FILE + "."
    return sorted(int(p.name[len(prefix):]) for p in Path(folder).glob(prefix + "*") if p.name[len(prefix):].isdigit())


def apply_event(state: JournalState, event: dict) -> None:
    """One log line onto ``state``: the record's new state, its prune decision, the rejected count."""
    if "record" in event:
        record = TrialRecord.from_dict(event["record"])
        state.records[record.number] = record
        if event.get("prune"):
            state.prune_decided.add(record.number)
    state.rejected = int(event.get("rejected", state.rejected))


class RecordJournal:
    """Appends events to ``folder``'s log and writes a snapshot at most every ``snapshot_every_s`` seconds.

    ``fsync``: each line is also forced to the disk (a power cut then loses no event; a killed process loses
    none either way, the line is flushed to the OS before ``append`` returns). ``writer``: periodic snapshots
    are written by it, in the background (see the module's docstring); a failed one is raised by the next
    ``append`` (nothing is lost: the segments it would have removed stay until a snapshot covers them).
    """

    def __init__(self, folder: str | os.PathLike, *, snapshot_every_s: float = 30.0, fsync: bool = False,
                 writer: BackgroundWriter | None = None) -> None:
        if isinstance(snapshot_every_s, bool) or not isinstance(snapshot_every_s, (int, float)) \
                or not snapshot_every_s >= 0:
            raise ValueError(f"snapshot_every_s must be a number >= 0, got snapshot_every_s={snapshot_every_s!r}")
        self.folder = Path(folder)
        self.snapshot_every_s = float(snapshot_every_s)
        self.fsync = bool(fsync)
        self.writer = writer
        self._key = f"journal:{self.folder.resolve()}"
        self._log: IO[bytes] | None = None
        self._snapshot_at = time.monotonic()
        self._segment = max(segments(self.folder), default=0) if self.folder.is_dir() else 0

    def load(self) -> JournalState:
        """The state (``read_journal``); a non-empty log is folded into a new snapshot before anything is appended."""
        state = read_journal(self.folder)
        log = self.folder / LOG_FILE
        if (log.exists() and log.stat().st_size > 0) or segments(self.folder):
            self.snapshot(state)
        return state

    def append(self, event: dict, state: Callable[[], JournalState]) -> None:
        """Append ``event`` (``{"record": ..., "prune": bool, "rejected": int}``); ``state()`` is written
        whole instead when a snapshot is due (with a writer: after the line, in the background)."""
        due = time.monotonic() - self._snapshot_at >= self.snapshot_every_s
        if self.writer is None and due:
            self.snapshot(state())
            return
        if self.writer is not None:
            self.writer.check(self._key)  # a background snapshot that failed: said here, the segments kept
        if self._log is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._log = open(self.folder / LOG_FILE, "ab")  # noqa: SIM115 - kept open between events
        self._log.write(json.dumps(event, default=_default).encode() + b"\n")
        self._log.flush()
        if self.fsync:
            os.fsync(self._log.fileno())
        if due:
            self._rotate(state().copy())

    def _rotate(self, state: JournalState) -> None:
        """Close the log as the next segment and have the writer snapshot ``state`` (which holds every line of it)."""
        self.close()
        self._segment += 1
        segment = self._segment
        os.replace(self.folder / LOG_FILE, self.folder / f"{LOG_FILE}.{segment}")
        self._snapshot_at = time.monotonic()

        def write() -> None:
            atomic_write_text(self.folder / SNAPSHOT_FILE, state.to_json())
            for k in segments(self.folder):
                if k <= segment:  # covered by this snapshot; later ones are not
                    (self.folder / f"{LOG_FILE}.{k}").unlink(missing_ok=True)

        self.writer.submit(self._key, write)

    def snapshot(self, state: JournalState) -> None:
        """Write ``state`` whole (atomically), now, then empty the log and the segments it makes redundant.

        A background snapshot queued is dropped (this one supersedes it) and one being written waited for, so
        it cannot land after this one; one that failed is superseded too, nothing of it was lost."""
        if self.writer is not None:
            self.writer.drain(self._key, drop=True)
            try:
                self.writer.check(self._key)
            except Exception:  # noqa: BLE001, S110 - superseded by the snapshot written now (it raises if it fails)
                pass
        atomic_write_text(self.folder / SNAPSHOT_FILE, state.to_json())
        self.close()
        for k in segments(self.folder):
            (self.folder / f"{LOG_FILE}.{k}").unlink(missing_ok=True)
        log = self.folder / LOG_FILE
        if log.exists():
            with open(log, "wb"):
                pass  # the snapshot holds every line; a crash before this leaves lines that replay to the same state
        self._snapshot_at = time.monotonic()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


__all__ = ["LOG_FILE", "SNAPSHOT_FILE", "JournalState", "RecordJournal", "apply_event", "check_meta", "jsonable",
           "plain", "read_journal", "segments", "shallow"]
