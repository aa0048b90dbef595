"""Writing results safely: JSON without non-finite floats, files replaced atomically, and slow periodic writes
(a file rewritten whole, an upload) run by one background thread so the caller does not wait for them."""

from __future__ import annotations

import math
import os
import pathlib
import threading
import uuid
from collections.abc import Callable
from typing import Any


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps`` writes as strict JSON: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write(path: str | os.PathLike, write: Callable[[pathlib.Path], Any]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``.

    A reader (or a process killed mid-write) sees the old file or the new one, never half of one.
    The temporary name is unique, so concurrent writers of the same file do not clobber each other's.
    """
    p = pathlib.Path(path)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


class BackgroundWriter:
    """One daemon thread that runs slow writes for their callers, one at a time.

    A write is keyed and carries a whole state (``submit(key, write)``: ``write()`` writes what was current
    when it was submitted): one submitted while another of its key waits replaces it, so the newest state wins
    and a burst of N costs at most two writes (the one running and the newest). A write's exception is kept
    for its key and raised by ``check(key)`` (the caller's next call), never lost and never printed by the
    thread. ``drain(key, drop=True)`` before a caller writes its final state itself: the queued write of the
    key is dropped (the final one supersedes it) and the running one waited for, so nothing written in the
    background lands after it. The thread ends after ``idle_s`` seconds without work and starts again with
    the next write.
    """

    def __init__(self, name: str = "squeezelstm-writer", idle_s: float = 5.0) -> None:
        self.name, self.idle_s = name, float(idle_s)
        self._cond = threading.Condition()
        self._queue: dict[str, Callable[[], Any]] = {}  # key -> its newest write, oldest key first
        self._running: str | None = None
        self._errors: dict[str, BaseException] = {}
        self._thread: threading.Thread | None = None
        self.writes = 0  # writes run so far (tests count them)

    def submit(self, key: str, write: Callable[[], Any]) -> None:
        """Queue ``write()`` for ``key`` (replacing the one of ``key`` not started yet); returns at once."""
        with self._cond:
            self._queue[key] = write
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def busy(self, key: str | None = None) -> bool:
        """Whether a write (of ``key``, or any) is queued or running."""
        with self._cond:
            return self._busy(key)

    def _busy(self, key: str | None) -> bool:
        if key is None:
            return bool(self._queue) or self._running is not None
        return key in self._queue or self._running == key

    def drain(self, key: str | None = None, *, drop: bool = False) -> int:
        """Wait until no write of ``key`` (None: of any key) is queued or running; ``drop``: forget the queued
        ones instead of running them (returns how many). Waits in short steps, so the caller's signal handlers
        still run (a second Ctrl-C stops the wait)."""
        with self._cond:
            dropped = [k for k in self._queue if drop and (key is None or k == key)]
            for k in dropped:
                del self._queue[k]
            while self._busy(key):
                self._cond.wait(0.1)
            return len(dropped)

    def check(self, key: str) -> None:
        """Raise (once) the exception a background write of ``key`` ended with, if one did."""
        with self._cond:
            error = self._errors.pop(key, None)
        if error is not None:
            raise error

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait(self.idle_s)
                if not self._queue:
                    self._thread = None  # idle: a later submit starts a new thread
                    return
                key = next(iter(self._queue))
                write = self._queue.pop(key)
                self._running = key
            try:
                write()
            except BaseException as exc:  # noqa: BLE001 - kept for the caller, who reports it (check)
                with self._cond:
                    self._errors.setdefault(key, exc)  # the first failure is the cause; later ones repeat it
            finally:
                with self._cond:
                    self._running = None
                    self.writes += 1
                    self._cond.notify_all()


__all__ = ["BackgroundWriter", "atomic_write", "atomic_write_text", "json_safe"]
