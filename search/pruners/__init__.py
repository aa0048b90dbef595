"""Whether a running trial goes on: Optuna's pruners and the Pareto-aware one, behind a pruning bridge."""

from ._pruners import PRUNERS, ParetoAwarePruner, PruningBridge, make_pruner, pareto_should_prune

__all__ = ["PRUNERS", "ParetoAwarePruner", "PruningBridge", "make_pruner", "pareto_should_prune"]
