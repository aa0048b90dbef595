"""Running the sampler's proposals: on one BLAS/OpenMP thread, the driver's way.

A proposal's algebra is a few hundred rows at most (``active_set``): too small for threads to
pay, and on a driver that shares its cores (Ray workers, other drivers) multi-threaded BLAS
oversubscribes them: measured here on a loaded 2-core machine, a proposal at 500 trials took
0.53 s (p50) with two BLAS threads and 0.09 s with one (benchmarks/README.md, "Driver at scale").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from threadpoolctl import threadpool_limits


@contextmanager
def one_thread() -> Iterator[None]:
    """Limit BLAS and OpenMP (numpy's and torch's) to one thread inside the block."""
    with threadpool_limits(limits=1):
        yield


class Prefetcher:
    """The next proposal, prepared in a background thread while the driver handles results.

    ``propose(observations)`` is the sampler's (``ExactSizeEHVI.propose``). After a trial is launched the
    controller calls ``refill`` with a snapshot of the observations (the new trial among the running
    ones, so the kriging believer keeps concurrent proposals apart); the proposal is computed outside
    the controller's lock, so reports and completions are handled meanwhile. ``wait`` (outside the lock)
    lets it finish; ``take`` hands it out, or computes one now when none was prepared (the first, or a
    retry). One proposal at a time: the sampler is never called from two threads at once.
    ``refills`` counts the proposals started in the background, so a caller (the replay) can tell that
    ``refill`` started one, and when.
    """

    def __init__(self, propose: Callable[[list], Any]) -> None:
        self._propose = propose
        self._thread: threading.Thread | None = None
        self._result: tuple[str, Any] | None = None
        self.refills = 0

    def _run(self, observations: list) -> None:
        try:
            with one_thread():
                self._result = ("ok", self._propose(observations))
        except BaseException as exc:  # handed to the caller of ``take``
            self._result = ("error", exc)

    def refill(self, observations: list) -> None:
        """Start preparing the next proposal from ``observations`` (unless one is already under way)."""
        if self._thread is None and self._result is None:
            self._thread = threading.Thread(target=self._run, args=(list(observations),), name="ehvi-prefetch",
                                            daemon=True)
            self.refills += 1
            self._thread.start()

    def ready(self) -> bool:
        """False while a proposal is being computed (``take`` would wait for it)."""
        return self._thread is None or not self._thread.is_alive()

    def wait(self) -> None:
        """Block until the proposal under way (if any) is ready."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def take(self, observations: Callable[[], list]) -> Any:
        """The prepared proposal, or one computed now from ``observations()``."""
        self.wait()
        result, self._result = self._result, None
        if result is None:
            with one_thread():
                return self._propose(observations())
        if result[0] == "error":
            raise result[1]
        return result[1]


__all__ = ["Prefetcher", "one_thread"]
