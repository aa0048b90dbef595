"""Where trials run: Ray Tune (the runner and its adapter), or a replay of recorded learning curves; the storage layout.

The Ray adapter imports Ray: its names load on first use, so ``squeezelstm train`` does not pay for it.
"""

import importlib

from ._driver_lock import DriverLock, DriverRunning
from ._driver_lock import acquire as acquire_driver_lock
from ._interrupt import SearchInterrupted, StopSignals
from ._replay import COSTS, Curve, CurveTable, ReplayResult, Stopper, log_hv, replay_search
from ._runner import (
    DEFAULT_STORAGE,
    RECORDS_FILE,
    SearchPaths,
    SearchResult,
    check_writable,
    has_state,
    is_uri,
    read_records,
    resolve_paths,
    run_search,
    write_records,
)

_RAY = ("ControllerScheduler", "ControllerSearcher", "SearchEvent", "SearchSession", "register_session",
        "release_session", "run_trial", "spec_to_dict")

__all__ = [
    "COSTS",
    "DEFAULT_STORAGE",
    "RECORDS_FILE",
    "Curve",
    "CurveTable",
    "DriverLock",
    "DriverRunning",
    "ReplayResult",
    "SearchPaths",
    "SearchInterrupted",
    "SearchResult",
    "StopSignals",
    "Stopper",
    "acquire_driver_lock",
    "check_writable",
    "has_state",
    "is_uri",
    "log_hv",
    "read_records",
    "replay_search",
    "resolve_paths",
    "run_search",
    "write_records",
    *_RAY,
]


def __getattr__(name: str):
    if name in _RAY:
        return getattr(importlib.import_module(f"{__name__}._ray"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
