"""Search space, Pareto maths, pruners and the Ray / Optuna / MLflow adapters."""

from .pareto import dominates, hypervolume, non_dominated_sort, pareto_mask, to_minimization

__all__ = ["dominates", "hypervolume", "non_dominated_sort", "pareto_mask", "to_minimization"]

from .records import OBJECTIVES, STATUSES, TrialRecord, finished, log_hypervolume, pareto_front

__all__ += ["OBJECTIVES", "STATUSES", "TrialRecord", "finished", "log_hypervolume", "pareto_front"]

from .space import RandomSuggester, SearchSpace, load_space, parse_space, shipped_spaces

__all__ += ["RandomSuggester", "SearchSpace", "load_space", "parse_space", "shipped_spaces"]

# The controller and pruners import Optuna: loaded on first use so `squeezelstm train` does not pay for it.
_LAZY_SEARCH_CORE = {
    "SearchController": "controller",
    "TrialSpec": "controller",
    "SAMPLERS": "controller",
    "PRUNERS": "pruners",
    "ParetoAwarePruner": "pruners",
    "PruningBridge": "pruners",
    "pareto_should_prune": "pruners",
}
__all__ += list(_LAZY_SEARCH_CORE)

# The Ray runner and export (notebook API): light to import, Ray itself loads only when a search runs.
from .export import export_trial, knee_point, pick
from .runner import SearchResult, run_search

__all__ += ["SearchResult", "export_trial", "knee_point", "pick", "run_search"]


def __getattr__(name: str):
    if name in _LAZY_SEARCH_CORE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY_SEARCH_CORE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
