"""Ctrl-C (SIGINT) and SIGTERM stop a search cleanly; a second one stops it at once.

Nothing has to be saved at the stop: the controller writes its journal at every event, and every
trial its per-epoch checkpoint. What a clean stop adds is that the running trials are ended by
Ray Tune's own shutdown (not killed with the driver half-way through a record), the MLflow
parent run is closed as KILLED (``--resume`` reopens it), and the command says that it was
interrupted, with an exit status a script or scheduler reads as such (128 + the signal: 130, 143).
The periodic whole writes the background writer may be doing then (``trainers.files.BackgroundWriter``) are
waited for by the runner's clean-up (``controller.flush``, the records file, ``end_search``), which then writes
the last state itself; a second signal stops that wait at once (it waits in short steps).

Ray Tune stops its loop gracefully on SIGUSR1 (``tune.run`` installs that handler for the length
of the run); the first signal here is turned into one, so its loop ends at its next step. Before
or after the loop there is nothing to wind down, and the signal stops at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SearchInterrupted(BaseException):
    """A search stopped by a signal. Not an ``Exception``: no ``except Exception`` on the way up may swallow it.

    ``signum`` is the signal, ``exit_status`` 128 + it; ``immediate`` is True for a second signal (or one
    outside Ray Tune's loop); ``counts`` are the trials per status when it stopped (set by the runner).
    """

    def __init__(self, signum: int, immediate: bool = False, counts: dict[str, int] | None = None) -> None:
        self.signum = int(signum)
        self.immediate = immediate
        self.counts = dict(counts or {})
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopSignals:
    """A context in which SIGINT and SIGTERM stop Ray Tune's loop gracefully; a second signal raises at once.

    ``signum`` is the first signal received (None if none). Only the main thread can install signal
    handlers: elsewhere the context does nothing. Ray Tune's own SIGINT handler is switched off
    inside (``TUNE_DISABLE_SIGINT_HANDLER``): it would replace this one and let Ray's loop end as a success.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._env: str | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise SearchInterrupted(self.signum, immediate=True)
        self.signum = signum
        tune_handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if not callable(tune_handler):  # Ray Tune's loop is not running: nothing to end gracefully
            raise SearchInterrupted(signum, immediate=True)
        tune_handler(signal.SIGUSR1, frame)  # the loop ends at its next step; trials are stopped by Ray


def fit_until_signal(fit: Callable[[], Any], stop: StopSignals | None = None) -> Any:
    """``fit()`` (Ray Tune's) inside ``stop`` (a new ``StopSignals`` if None); ``SearchInterrupted`` if a signal ended it.

    Pass the caller's entered ``StopSignals`` to keep its handlers past the loop, so that a second signal
    during the caller's clean-up still raises ``SearchInterrupted`` rather than ``KeyboardInterrupt``."""
    if stop is None:
        with StopSignals() as own:
            return fit_until_signal(fit, own)
    out = fit()
    if stop.signum is not None:
        raise SearchInterrupted(stop.signum)
    return out


__all__ = ["SIGNALS", "SearchInterrupted", "StopSignals", "fit_until_signal"]
