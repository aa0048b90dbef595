"""A completion's MLflow work, off Ray's event loop: one thread runs it, in the order the trials closed.

Ending a trial's child run and bringing the parent's front up to date costs a handful of tracking calls
(0.2-0.3 s at p95 on a loaded 2-core box with SQLite, network round trips with a remote server). Ray Tune
calls the searcher's ``on_trial_complete`` on its one event-loop thread, so that time held every result
and pruning decision that arrived meanwhile. The runner now hands the work to a ``TrackingQueue``: the
tracker is used by that one thread for the whole search (before and after it, by the driver's), so it
needs no locks. The first failure (a tracking server gone) is kept: the queue drops what it holds and
takes no more, and ``check`` raises it on the loop thread at the next completion, where it ends the
search as a tracking failure did before; the trials it dropped are ended by ``--resume``
(``SearchTracker.end_stale_trials``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class TrackingQueue:
    """Jobs run one at a time, first in first out, on a daemon thread; the first failure stops it."""

    def __init__(self, name: str = "squeezelstm-tracking") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._jobs: deque[Callable[[], Any]] = deque()
        self._running = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.done = 0  # jobs run so far

    def submit(self, job: Callable[[], Any]) -> None:
        """Queue ``job()``; returns at once. Ignored after a failure (``check`` raises it)."""
        with self._cond:
            if self.error is not None:
                return
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._jobs) + self._running

    def check(self) -> None:
        """Raise the failure a job ended with, if one did (every time: the queue has stopped)."""
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        """Wait until every queued job has run (or the queue stopped at a failure). Waits in short steps,
        so the caller's signal handlers still run: a second Ctrl-C stops the wait."""
        with self._cond:
            while self._jobs or self._running:
                self._cond.wait(0.1)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job = self._jobs.popleft()
                self._running = True
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - kept for the loop thread, which raises it (check)
                with self._cond:
                    self.error = exc
                    self._jobs.clear()
            finally:
                with self._cond:
                    self._running = False
                    self.done += 1
                    self._cond.notify_all()


__all__ = ["TrackingQueue"]
