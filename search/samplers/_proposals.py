"""Running the sampler's proposals: on one BLAS/OpenMP thread, the driver's way.

A proposal's algebra is a few hundred rows at most (``active_set``): too small for threads to
pay, and on a driver that shares its cores (Ray workers, other drivers) multi-threaded BLAS
oversubscribes them: measured here on a loaded 2-core machine, a proposal at 500 trials took
0.53 s (p50) with two BLAS threads and 0.09 s with one (benchmarks/README.md, "Driver at scale").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits


@contextmanager
def one_thread() -> Iterator[None]:
    """Limit BLAS and OpenMP (numpy's and torch's) to one thread inside the block."""
    with threadpool_limits(limits=1):
        yield


__all__ = ["one_thread"]
