"""Trial records, the objectives they are judged on, the Pareto maths over them (numpy), and the
records as a pandas DataFrame (``records_dataframe``)."""

from ._frame import records_dataframe
from ._maths import dominates, hypervolume, non_dominated_sort, pareto_mask, to_minimization
from ._records import (
    DEFAULT_SIZE,
    OBJECTIVES,
    SIZE_LABELS,
    SIZES,
    STATUSES,
    TrialRecord,
    check_size,
    finished,
    log_hypervolume,
    log_hypervolume_of,
    objective_matrix,
    objectives,
    objective_values,
    pareto_front,
    size_text,
    status_counts,
)

__all__ = [
    "DEFAULT_SIZE",
    "OBJECTIVES",
    "SIZES",
    "SIZE_LABELS",
    "STATUSES",
    "TrialRecord",
    "check_size",
    "dominates",
    "finished",
    "hypervolume",
    "log_hypervolume",
    "log_hypervolume_of",
    "non_dominated_sort",
    "objective_matrix",
    "objectives",
    "objective_values",
    "pareto_front",
    "pareto_mask",
    "records_dataframe",
    "size_text",
    "status_counts",
    "to_minimization",
]
