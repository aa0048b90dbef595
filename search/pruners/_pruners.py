"""Pruning for a multi-objective search: Optuna's pruners on each trial's learning curve, and a Pareto-aware one.

Optuna refuses ``trial.report`` in a multi-objective study, and Ray's ``OptunaSearch`` uses no
pruner at all, so pruning runs beside the main study: a *shadow* single-objective, in-memory
study holds one trial per launched search trial, receives each epoch's validation perplexity via
``trial.report`` and answers ``should_prune()`` with the wrapped Optuna pruner. Its decisions are
therefore exactly Optuna's. The main study only ever hears the outcome (PRUNED).

Wrapped pruners (``make_pruner`` names): ``median`` and ``percentile`` compare a trial's best value
with the other finished trials at the same epoch; ``successive_halving`` and ``hyperband`` keep
the top fraction of each rung; ``wilcoxon`` is built for steps that are evaluation instances, so
here the epochs are its paired samples against the best trial (with a handful of epochs it
rarely fires); ``none`` never prunes; ``pareto`` is ``ParetoAwarePruner`` below.

A plain pruner compares every trial with every other, so it kills the small models first, which
are exactly the ones the Pareto front needs. ``ParetoAwarePruner`` instead compares a trial only
with trials that have *no more* parameters:

* dominated: some trial with no more parameters is already clearly better at the same epoch (its
  perplexity times ``1 + margin`` is no higher), so the trial is very likely dominated at the end;
* neighbourhood: among the trials of similar size that have no more parameters
  (``params / window <= p <= params``, at least ``min_neighbors`` of them), the trial is worse than
  the ``percentile`` of their values times ``1 + neighbor_margin``. Many neighbours are a steadier
  witness than one, so this rule can use a smaller margin than the first.

A larger trial being better says nothing about whether a smaller one ends on the front, so larger
trials are never used. The margins absorb learning curves that converge at different speeds: when
every curve's shape at an epoch differs from the others' by less than the margins, a trial that
would end on the front is never pruned (the tests check this on scripted curves). The decision
itself is the pure function ``pareto_should_prune``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband", "wilcoxon", "pareto")
PARAMS_ATTR = "params"


def pareto_should_prune(
    value: float,
    params: int,
    others: Sequence[tuple[float, float]],
    *,
    margin: float = 0.15,
    window: float = 2.0,
    percentile: float = 50.0,
    min_neighbors: int = 3,
    neighbor_margin: float = 0.05,
) -> bool:
    """Whether a trial with ``params`` and perplexity ``value`` at this epoch should stop.

    ``others`` holds ``(params, value)`` of the other trials at the same epoch. True when a trial
    with no more parameters has ``value / (1 + margin)`` or less (dominated), or when at least
    ``min_neighbors`` trials with ``params / window <= p <= params`` exist and ``value`` is above
    ``(1 + neighbor_margin)`` times the ``percentile`` of theirs (neighbourhood). A non-finite
    ``value`` is always pruned.
    """
    pairs = np.asarray(list(others), dtype=float).reshape(-1, 2)
    order = np.argsort(pairs[:, 0], kind="stable")
    return _prune_sorted(value, params, pairs[order, 0], pairs[order, 1], margin=margin, window=window,
                         percentile=percentile, min_neighbors=min_neighbors, neighbor_margin=neighbor_margin)


def _prune_sorted(value: float, params: int, step_params: np.ndarray, step_values: np.ndarray, *, margin: float,
                  window: float, percentile: float, min_neighbors: int, neighbor_margin: float) -> bool:
    """``pareto_should_prune`` with the others' params and values as two arrays sorted by params (how
    ``PruningBridge`` keeps them): "no more parameters" is a prefix, found by bisection. Multiplying by
    ``1 + margin`` is monotone in floating point, so "some smaller trial's value times ``1 + margin`` is
    <= ``value``" is "their least value times it is"; the percentile does not depend on the values' order.
    """
    if not math.isfinite(value):
        return True
    smaller_p = step_params[: int(np.searchsorted(step_params, params, side="right"))]
    smaller_v = step_values[: smaller_p.size]
    finite = np.isfinite(smaller_v)
    if not finite.all():
        smaller_p, smaller_v = smaller_p[finite], smaller_v[finite]
    if smaller_v.size and float(smaller_v.min()) * (1.0 + margin) <= value:
        return True
    neighbours = smaller_v[smaller_p * window >= params]
    if neighbours.size >= min_neighbors:
        return value > (1.0 + neighbor_margin) * float(np.percentile(neighbours, percentile))
    return False


class ParetoAwarePruner(BasePruner):
    """Optuna pruner deciding with ``pareto_should_prune``; each trial's parameter count is its ``params`` user attr.

    ``n_startup_trials`` completed trials are needed before anything is pruned, and nothing is
    pruned before step ``n_warmup_steps`` (steps are epochs). The trial's best value so far is
    compared with the other trials' values at the same step (all states: a pruned or running
    trial's value at that epoch is as real as a finished one's).
    """

    def __init__(
        self,
        *,
        margin: float = 0.15,
        window: float = 2.0,
        percentile: float = 50.0,
        min_neighbors: int = 3,
        neighbor_margin: float = 0.05,
        n_startup_trials: int = 2,
        n_warmup_steps: int = 1,
    ) -> None:
        for name, value in (("margin", margin), ("neighbor_margin", neighbor_margin)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")
        if not (isinstance(window, (int, float)) and math.isfinite(window) and window >= 1):
            raise ValueError(f"window must be a finite number >= 1, got {window=}")
        if not (isinstance(percentile, (int, float)) and 0 <= percentile <= 100):
            raise ValueError(f"percentile must be in [0, 100], got {percentile=}")
        for name, value in (("min_neighbors", min_neighbors), ("n_startup_trials", n_startup_trials), ("n_warmup_steps", n_warmup_steps)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {name}={value!r}")
        if min_neighbors < 1:
            raise ValueError(f"min_neighbors must be >= 1, got {min_neighbors=}")
        self.margin = float(margin)
        self.neighbor_margin = float(neighbor_margin)
        self.window = float(window)
        self.percentile = float(percentile)
        self.min_neighbors = min_neighbors
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        trials = study.get_trials(deepcopy=False)
        if sum(t.state == TrialState.COMPLETE for t in trials) < self.n_startup_trials:
            return False
        params = trial.user_attrs.get(PARAMS_ATTR)
        if params is None:
            raise ValueError(f"trial {trial.number} has no {PARAMS_ATTR!r} user attribute for ParetoAwarePruner")
        finite = [v for s, v in trial.intermediate_values.items() if s <= step and math.isfinite(v)]
        best = min(finite) if finite else math.inf
        others = [
            (t.user_attrs[PARAMS_ATTR], t.intermediate_values[step])
            for t in trials
            if t.number != trial.number and step in t.intermediate_values and PARAMS_ATTR in t.user_attrs
        ]
        return pareto_should_prune(best, params, others, **self._rules())

    def decide(self, value: float, params: int, step_params: np.ndarray, step_values: np.ndarray) -> bool:
        """``prune``'s decision from the other trials' params and values at the step, two arrays sorted by
        params (``PruningBridge``'s index)."""
        return _prune_sorted(value, params, step_params, step_values, **self._rules())

    def _rules(self) -> dict:
        return {"margin": self.margin, "window": self.window, "percentile": self.percentile,
                "min_neighbors": self.min_neighbors, "neighbor_margin": self.neighbor_margin}


def make_pruner(name: str, **kwargs) -> BasePruner:
    """The pruner called ``name`` (one of ``PRUNERS``) built with ``kwargs``; ValueError for an unknown name or argument."""
    factories = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "wilcoxon": optuna.pruners.WilcoxonPruner,
        "pareto": ParetoAwarePruner,
    }
    if name not in factories:
        raise ValueError(f"unknown pruner={name!r}; valid pruners: {', '.join(PRUNERS)}")
    if name == "percentile":
        kwargs.setdefault("percentile", 25.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # WilcoxonPruner
            return factories[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad argument for pruner {name!r}: {exc}") from None


class PruningBridge:
    """Per-epoch pruning decisions for a multi-objective search, through a shadow single-objective study.

    Trials are keyed by the search's trial numbers. ``start`` opens a shadow trial, ``report``
    records one epoch's validation perplexity and returns True when the wrapped pruner says to stop,
    ``finish`` closes the shadow trial with its real outcome (COMPLETE with the final perplexity,
    PRUNED, or FAIL), so later decisions compare against real learning curves only.

    With ``ParetoAwarePruner`` (the default) the bridge answers from its own index instead of asking the
    shadow study: per epoch, every trial's ``(params, value)`` in arrays sorted by params, so a decision
    costs a few vectorised passes rather than a Python loop over every shadow trial (3.5 ms at 5,000
    trials, growing with the search). The shadow study still receives every report and outcome, and the
    decisions are the pruner's own (``ParetoAwarePruner.decide``; the tests compare both paths).
    """

    def __init__(self, pruner: str | BasePruner = "pareto", *, study_name: str = "pruning", **pruner_kwargs) -> None:
        if isinstance(pruner, BasePruner):
            if pruner_kwargs:
                raise ValueError(f"pruner arguments {sorted(pruner_kwargs)} given with a pruner instance")
            self.pruner = pruner
            self.name = type(pruner).__name__
        elif isinstance(pruner, str):
            self.pruner = make_pruner(pruner, **pruner_kwargs)
            self.name = pruner
        else:
            raise TypeError(f"pruner must be a name or an optuna BasePruner, got pruner={pruner!r}")
        self.study = optuna.create_study(
            study_name=study_name,
            storage=optuna.storages.InMemoryStorage(),
            direction="minimize",
            sampler=optuna.samplers.RandomSampler(seed=0),
            pruner=self.pruner,
        )
        self._trials: dict[int, optuna.Trial] = {}
        self._closed: set[int] = set()
        self._curves: dict[int, dict[int, float]] = {}
        self._indexed = isinstance(self.pruner, ParetoAwarePruner)
        self._params: dict[int, int] = {}
        self._steps: dict[int, _StepIndex] = {}  # epoch -> every trial's value there, by params
        self._completed = 0  # shadow trials told COMPLETE

    def start(self, number: int, params: int) -> None:
        """Open the shadow trial of search trial ``number`` (idempotent)."""
        if number in self._trials:
            return
        trial = self.study.ask()
        trial.set_user_attr(PARAMS_ATTR, int(params))
        self._trials[number] = trial
        self._params[number] = int(params)
        self._curves[number] = {}

    def report(self, number: int, epoch: int, value: float) -> bool:
        """Record ``value`` at step ``epoch`` for trial ``number``; True means prune now."""
        trial = self._trials.get(number)
        if trial is None:
            raise ValueError(f"trial number={number} was never started in the pruning bridge")
        if number in self._closed:
            return False
        curve = self._curves[number]
        if int(epoch) not in curve:  # a resumed trial may repeat its last epoch: Optuna keeps the first value
            curve[int(epoch)] = float(value)
            trial.report(float(value), int(epoch))
            if self._indexed:
                self._steps.setdefault(int(epoch), _StepIndex()).add(self._params[number], float(value), number)
        if self._indexed:
            return self._decide(number)
        return bool(trial.should_prune())

    def _decide(self, number: int) -> bool:
        """``ParetoAwarePruner.prune`` for trial ``number``, from the index (what ``should_prune`` would say)."""
        pruner: ParetoAwarePruner = self.pruner  # type: ignore[assignment]
        curve = self._curves[number]
        step = max(curve)
        if step < pruner.n_warmup_steps or self._completed < pruner.n_startup_trials:
            return False
        finite = [v for v in curve.values() if math.isfinite(v)]  # every step reported is <= step, the last
        best = min(finite) if finite else math.inf
        step_params, step_values = self._steps[step].others(number)
        return pruner.decide(best, self._params[number], step_params, step_values)

    def finish(self, number: int, status: str, value: float | None = None) -> None:
        """Close trial ``number``: finished -> COMPLETE(value), pruned -> PRUNED, anything else -> FAIL."""
        trial = self._trials.get(number)
        if trial is None or number in self._closed:
            return
        if status == "finished" and value is not None and math.isfinite(value):
            self.study.tell(trial, float(value))
            self._completed += 1
        elif status == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
        self._closed.add(number)

    def curve(self, number: int) -> dict[int, float]:
        """Epoch -> value reported so far for trial ``number``."""
        return dict(self._curves[number])


class _StepIndex:
    """One epoch's reported values: params, values and trial numbers in three arrays sorted by params."""

    def __init__(self) -> None:
        self.params = np.empty(0)
        self.values = np.empty(0)
        self.numbers = np.empty(0, dtype=np.int64)

    def add(self, params: int, value: float, number: int) -> None:
        at = int(np.searchsorted(self.params, params, side="right"))
        self.params = np.insert(self.params, at, float(params))
        self.values = np.insert(self.values, at, value)
        self.numbers = np.insert(self.numbers, at, number)

    def others(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Params and values of every trial but ``number``, still sorted by params."""
        mine = self.numbers == number
        if not mine.any():
            return self.params, self.values
        keep = ~mine
        return self.params[keep], self.values[keep]


__all__ = ["PRUNERS", "ParetoAwarePruner", "PruningBridge", "make_pruner", "pareto_should_prune"]
