"""Where trials run: Ray Tune (the runner and its adapter), or a replay of recorded learning curves; the storage layout;
a refinement's (member, seed) runs on Ray Tune (``run_refine``).

The Ray adapter imports Ray (about two seconds): its names load on first use, so the command's other
jobs do not pay for it.
"""

import importlib

from ._driver_lock import DriverLock, DriverRunning
from ._driver_lock import acquire as acquire_driver_lock
from ._interrupt import SearchInterrupted, StopSignals
from ._replay import COSTS, TABLE_COLUMNS, Curve, CurveTable
from ._replay_loop import ReplayResult, Stopper, replay_search
from ._replay_run import MAPPINGS, check_table, run_replay
from ._refine import REFINE_DIR, read_refinement, refined_path, run_dirname, run_refine, write_refinement
from ._runner import SearchResult, quiet_libraries, run_search
from ._storage import (
    DEFAULT_STORAGE,
    RECORDS_FILE,
    RecordsFile,
    SearchPaths,
    check_writable,
    has_state,
    is_uri,
    read_live_records,
    read_records,
    resolve_paths,
    write_records,
)

_REFINE_TRIALS = ("RefineEvent", "RefineSearcher", "RefineSession", "live_refine_session")
_RAY = ("ControllerScheduler", "ControllerSearcher", "SearchEvent", "SearchSession", "live_session",
        "register_session", "release_session", "run_trial", "spec_to_dict")

__all__ = [
    "REFINE_DIR",
    "read_refinement",
    "refined_path",
    "run_dirname",
    "run_refine",
    "write_refinement",
    "COSTS",
    "DEFAULT_STORAGE",
    "RECORDS_FILE",
    "Curve",
    "CurveTable",
    "DriverLock",
    "DriverRunning",
    "MAPPINGS",
    "RecordsFile",
    "ReplayResult",
    "SearchInterrupted",
    "SearchPaths",
    "SearchResult",
    "StopSignals",
    "Stopper",
    "TABLE_COLUMNS",
    "acquire_driver_lock",
    "check_table",
    "check_writable",
    "has_state",
    "is_uri",
    "quiet_libraries",
    "read_live_records",
    "read_records",
    "replay_search",
    "resolve_paths",
    "run_replay",
    "run_search",
    "write_records",
    *_RAY,
    *_REFINE_TRIALS,
]


def __getattr__(name: str):
    if name in _RAY:
        return getattr(importlib.import_module(f"{__name__}._ray"), name)
    if name in _REFINE_TRIALS:
        return getattr(importlib.import_module(f"{__name__}._refine_trials"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
