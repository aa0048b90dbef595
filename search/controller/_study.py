"""Two small helpers over Optuna for the controller: its logging kept quiet while the controller works, and the
trials a study already holds (a resumed search mixes that count into its sampler's seed)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import optuna


def quiet_optuna(method: Callable) -> Callable:
    """Optuna at WARNING while ``method`` runs (one INFO line per tell would drown the progress output),
    restored afterwards: the caller's own Optuna logging is left as it was."""

    @functools.wraps(method)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        before = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(max(before, optuna.logging.WARNING))  # a quieter level is kept
        try:
            return method(*args, **kwargs)
        finally:
            optuna.logging.set_verbosity(before)

    return quiet


def count_trials(storage: Any, study_name: str) -> int:
    """How many trials the study ``study_name`` holds in ``storage`` (0 if there is none)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


__all__ = ["count_trials", "quiet_optuna"]
