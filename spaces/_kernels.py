"""The compiled recurrence loops (``_kernels.cpp``), built once per machine on first use.

``kernels()`` returns the op namespace ``torch.ops.squeezelstm_kernels`` or ``None`` where they
cannot be used (no C++ compiler, a failed build, or ``SQUEEZELSTM_KERNELS=0``); callers then run the
equivalent Python loops of ``_recurrence.py``, which are the specification the compiled ops are
tested against. The build goes through ``torch.utils.cpp_extension`` (ninja + the system's g++),
takes ~30-60 s once, and is cached under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``); concurrent processes (Ray workers) wait on the builder's lock.

Loading them also keeps glibc from handing freed buffers back to the kernel between training steps
(``keep_freed_memory``; process-wide, opt out with ``SQUEEZELSTM_MALLOC_TUNE=0``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("_kernels.cpp")
_ENV = "SQUEEZELSTM_KERNELS"
_state: dict[str, object] = {}


def enabled() -> bool:
    """Whether the CPU compiled loops may be used (``SQUEEZELSTM_KERNELS`` is neither ``0`` nor ``gpu``)."""
    return os.environ.get(_ENV, "1").strip().lower() not in ("0", "false", "no", "off", "gpu")


def gpu_path(*tensors: torch.Tensor) -> bool:
    """Whether these tensors take the CUDA code path: they live on a GPU, or ``SQUEEZELSTM_KERNELS=gpu``
    (read at every call) sends CPU tensors down exactly that path, Triton kernels included (run by
    Triton's interpreter under ``TRITON_INTERPRET=1``), never the CPU compiled loops."""
    if any(t.is_cuda for t in tensors):
        return True
    return os.environ.get(_ENV, "").strip().lower() == "gpu"


def kernels():
    """The compiled ops, building them on first call; ``None`` (with one warning) if unavailable."""
    if not enabled():
        return None
    if "ops" in _state:
        return _state["ops"]
    ops = None
    try:
        ops = _load()
    except Exception as exc:  # no compiler, headers, ninja...: fall back, but say so once
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"squeezelstm: compiled recurrences unavailable ({type(exc).__name__}: {first}); "
                      f"using the slower Python loops (set {_ENV}=0 to silence)", RuntimeWarning, stacklevel=2)
    _state["ops"] = ops
    if ops is not None:
        keep_freed_memory()
    return ops


_MALLOC_ENV = "SQUEEZELSTM_MALLOC_TUNE"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Make glibc's malloc reuse freed buffers of up to ``mmap_threshold`` bytes instead of unmapping
    them (and keep up to ``trim_threshold`` bytes of freed heap); returns whether it applied.

    A training step of these recurrences frees and reallocates a dozen 1-20 MB buffers (activations,
    gate gradients, input projections). With glibc's defaults each of them is a fresh ``mmap``: at
    n = 256, batch 32 that was 800-1300 page faults and 2-3.5 ms of kernel time a step (10-15% of the
    step; ``torch.nn.LSTM`` in the same process had none). Process-wide: skipped where the user
    configured malloc (``MALLOC_*_`` / ``GLIBC_TUNABLES``), off glibc, or with ``SQUEEZELSTM_MALLOC_TUNE=0``.
    """
    if os.environ.get(_MALLOC_ENV, "1").strip() in ("0", "false", "no", "off"):
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # setting either one switches off glibc's dynamic thresholds, so both are set
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def _isa() -> tuple[str, list[str]]:
    """The widest vector ISA this CPU has (x86-64 Linux), as a build-name suffix and gcc flags.

    The build is named after it, so a cache shared by machines with different CPUs (a cluster's home
    directory) never hands one the other's instructions."""
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return "generic", []
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq", "fma"} <= flags:
        return "avx512", ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"]
    if {"avx2", "fma"} <= flags:
        return "avx2", ["-mavx2", "-mfma"]
    return "generic", []


_STALE_LOCK_S = 15 * 60  # a build takes ~1 min, a few on a loaded machine


def _drop_stale_lock(lock: Path, max_age_s: float = _STALE_LOCK_S) -> bool:
    """Remove torch's build lock if no build has touched it for ``max_age_s``; returns whether it did.

    torch's ``FileBaton`` records no owner: a lock left by a killed builder is only recognisable by age."""
    try:
        if time.time() - lock.stat().st_mtime > max_age_s:
            lock.unlink()
            return True
    except FileNotFoundError:
        pass
    return False


def _load():
    from torch.utils.cpp_extension import _get_build_directory, load

    isa, isa_flags = _isa()
    # The source's hash in the name: a new version (or another checkout beside this one) builds into
    # its own directory instead of rebuilding, under a lock, over the one another process is using.
    digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:12]
    name = f"squeezelstm_kernels_{isa}_{digest}"
    built = Path(_get_build_directory(name, verbose=False)) / f"{name}.so"
    if built.exists():
        # Built before (this process's hash): load it without torch's build step, which takes a lock
        # file in the build directory in every process and waits forever on one that a killed process
        # (a Ray worker stopped mid-build, a timed-out test) left behind.
        try:
            torch.ops.load_library(str(built))
            return torch.ops.squeezelstm_kernels
        except OSError:
            pass  # a half-written library from an interrupted link: rebuild it below
    _drop_stale_lock(built.parent / "lock")
    if not built.exists():
        print("squeezelstm: compiling the recurrence kernels (once per machine, about a minute)...",
              file=sys.stderr, flush=True)
    load(name=name, sources=[str(_SOURCE)], extra_cflags=["-O3", "-fno-trapping-math", "-fopenmp", *isa_flags], extra_ldflags=["-fopenmp"],
         is_python_module=False, verbose=False)
    return torch.ops.squeezelstm_kernels
