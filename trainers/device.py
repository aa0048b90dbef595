"""Where training runs: ``auto`` picks CUDA when present, else the CPU with a sensible thread count."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

# Small recurrent matmuls stop scaling after a few cores; more threads only add sync overhead.
MAX_AUTO_THREADS = 8


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` if available else ``cpu``; asking for CUDA without it -> ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"train.device={name!r} is not a device (use 'auto', 'cpu' or 'cuda[:N]')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available (use 'auto' or 'cpu')")
    return device


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def thread_budget(device: torch.device, threads: int = 0) -> Iterator[int]:
    """Set torch's intra-op threads for the block (``threads`` or auto on CPU) and restore them after."""
    before = torch.get_num_threads()
    if threads:
        want = threads
    elif device.type == "cpu":
        want = max(1, min(available_cores(), MAX_AUTO_THREADS))
    else:
        want = before
    torch.set_num_threads(want)
    try:
        yield want
    finally:
        torch.set_num_threads(before)


def autocast(device: torch.device, precision: str):
    """Autocast context for ``bf16``/``fp16`` on CUDA; a no-op for ``fp32`` or on the CPU."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)
