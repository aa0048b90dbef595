"""Search for compact LSTM-family models: one sub-package per concept (see docs/ARCHITECTURE.md).

``pareto`` (trial records, objectives, Pareto maths), ``space`` (the search space and its files),
``samplers`` and ``pruners`` (what to try, whether to go on), ``controller`` (the study behind
both), ``backends`` (where trials run: Ray, or a replay), ``tracking`` (MLflow), ``export``, ``cli``.
"""

import importlib

from .pareto import (
    OBJECTIVES,
    STATUSES,
    TrialRecord,
    dominates,
    finished,
    hypervolume,
    log_hypervolume,
    non_dominated_sort,
    pareto_front,
    pareto_mask,
    records_dataframe,
    to_minimization,
)
from .space import RandomSuggester, SearchSpace, load_space, parse_space, shipped_spaces

# The Ray runner and export (notebook API): light to import, Ray itself loads only when a search runs.
from .backends import SearchResult, run_search
from .export import export_trial, knee_point, pick, trials_dataframe

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

__all__ = [
    "OBJECTIVES",
    "STATUSES",
    "RandomSuggester",
    "SearchResult",
    "SearchSpace",
    "TrialRecord",
    "dominates",
    "export_trial",
    "finished",
    "hypervolume",
    "knee_point",
    "load_space",
    "log_hypervolume",
    "non_dominated_sort",
    "parse_space",
    "pareto_front",
    "pareto_mask",
    "pick",
    "records_dataframe",
    "run_search",
    "shipped_spaces",
    "to_minimization",
    "trials_dataframe",
    *_LAZY_SEARCH_CORE,
]


def __getattr__(name: str):
    if name in _LAZY_SEARCH_CORE:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_SEARCH_CORE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
