"""Search for compact LSTM-family models: one sub-package per concept (see docs/ARCHITECTURE.md).

``pareto`` (trial records, objectives, Pareto maths), ``space`` (the search space and its files),
``config`` (``SearchConfig``, one search), ``samplers`` and ``pruners`` (what to try, whether to go
on), ``controller`` (the study behind both), ``backends`` (where trials run: Ray, or a replay; the
storage layout), ``tracking`` (MLflow), ``export``, ``cli`` (the command, which wires them together).
Ray and MLflow load only when a search or a store is used.
"""

from .backends import SearchResult, read_refinement, replay_search, run_refine, run_search
from .config import SearchConfig
from .controller import SearchController, TrialSpec
from .export import export_trial, knee_point, pick, trials_dataframe
from .pareto import (
    OBJECTIVES,
    STATUSES,
    Refinement,
    TrialRecord,
    dominates,
    finished,
    hypervolume,
    log_hypervolume,
    new_refinement,
    non_dominated_sort,
    pareto_front,
    pareto_mask,
    records_dataframe,
    to_minimization,
)
from .pruners import PRUNERS, ParetoAwarePruner, PruningBridge, pareto_should_prune
from .samplers import SAMPLERS
from .space import RandomSuggester, SearchSpace, load_space, parse_space, shipped_spaces

__all__ = [
    "Refinement",
    "new_refinement",
    "read_refinement",
    "run_refine",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "STATUSES",
    "ParetoAwarePruner",
    "PruningBridge",
    "RandomSuggester",
    "SearchConfig",
    "SearchController",
    "SearchResult",
    "SearchSpace",
    "TrialRecord",
    "TrialSpec",
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
    "pareto_should_prune",
    "pick",
    "records_dataframe",
    "replay_search",
    "run_search",
    "shipped_spaces",
    "to_minimization",
    "trials_dataframe",
]
