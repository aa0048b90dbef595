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
    log_hypervolume_of,
    objective_matrix,
    objective_values,
    pareto_front,
    status_counts,
)

__all__ = [
    "OBJECTIVES",
    "STATUSES",
    "TrialRecord",
    "dominates",
    "finished",
    "hypervolume",
    "log_hypervolume",
    "log_hypervolume_of",
    "non_dominated_sort",
    "objective_matrix",
    "objective_values",
    "pareto_front",
    "pareto_mask",
    "records_dataframe",
    "status_counts",
    "to_minimization",
]
