"""Trial records, the objectives they are judged on, the Pareto maths over them (numpy), and the
records as a pandas DataFrame (``records_dataframe``)."""

from ._frame import records_dataframe
from ._maths import dominates, hypervolume, non_dominated_sort, pareto_mask, to_minimization
from ._records import (
    OBJECTIVES,
    STATUSES,
    TrialRecord,
    finished,
    log_hypervolume,
    objective_matrix,
    pareto_front,
)

__all__ = [
    "OBJECTIVES",
    "STATUSES",
    "TrialRecord",
    "dominates",
    "finished",
    "hypervolume",
    "log_hypervolume",
    "non_dominated_sort",
    "objective_matrix",
    "pareto_front",
    "pareto_mask",
    "records_dataframe",
    "to_minimization",
]
