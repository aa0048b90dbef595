"""The Ray driver's per-event latencies, one JSON line each: a debug aid, off unless asked for.

``SQUEEZELSTM_DRIVER_EVENTS=1`` writes ``<experiment dir>/driver_events.jsonl`` (any other non-empty value
but ``0`` is taken as the file's path). Lines (times are ``time.time()`` seconds):

* ``{"event": "result", "number", "epoch", "reported_at", "arrived", "wait_s", "handle_s", "proposing"}``:
  a trial's epoch report; ``wait_s`` is from the trainer's ``tune.report`` to the scheduler's
  ``on_trial_result`` (Ray's transport plus whatever held the driver's loop), ``handle_s`` the pruning
  decision, ``proposing`` whether the sampler's next proposal was being computed when it arrived;
* ``{"event": "complete", "number", "status", "reported_at", "arrived", "wait_s", "handle_s", "proposing"}``:
  ``on_trial_complete`` with the controller's bookkeeping and the tracking (``wait_s`` is null for a trial
  the scheduler stopped: its last report was already counted);
* ``{"event": "suggest", "number", "start", "end", "deferred"}``: the searcher's ``suggest``; ``deferred``
  when it handed out nothing because the proposal was not ready yet (Ray asks again).

``benchmarks/ray_driver_latency.py`` runs a search with it and summarises the file.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

EVENTS_ENV = "SQUEEZELSTM_DRIVER_EVENTS"
EVENTS_FILE = "driver_events.jsonl"


class DriverEventLog:
    """Appends one JSON line per driver event to ``path`` (line-buffered: a killed driver keeps what it wrote)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", buffering=1)
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, experiment_dir: str | os.PathLike) -> DriverEventLog | None:
        """The log ``SQUEEZELSTM_DRIVER_EVENTS`` asks for, or None (the default)."""
        value = os.environ.get(EVENTS_ENV, "").strip()
        if not value or value == "0":
            return None
        return cls(Path(experiment_dir) / EVENTS_FILE if value == "1" else Path(value).expanduser())

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, default=str)
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


__all__ = ["EVENTS_ENV", "EVENTS_FILE", "DriverEventLog"]
