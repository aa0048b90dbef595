"""Search space, Pareto maths, pruners and the Ray / Optuna / MLflow adapters."""

from .pareto import dominates, hypervolume, non_dominated_sort, pareto_mask, to_minimization

__all__ = ["dominates", "hypervolume", "non_dominated_sort", "pareto_mask", "to_minimization"]

from .records import OBJECTIVES, STATUSES, TrialRecord, finished, log_hypervolume, pareto_front

__all__ += ["OBJECTIVES", "STATUSES", "TrialRecord", "finished", "log_hypervolume", "pareto_front"]
