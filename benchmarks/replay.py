"""Ray's ASHA (``AsyncHyperBandScheduler``) as a ``Stopper`` for the replay, driven without a Ray cluster.

The scheduler's decisions only need ``trial.trial_id`` and result dicts, so the real Ray class is
driven directly: ``on_trial_add`` / ``on_trial_result`` / ``on_trial_complete`` with a stand-in
trial object and no TuneController. With ``brackets=1`` (what ``squeezelstm search`` would use)
the bracket choice is deterministic (Ray draws it from numpy's global RNG only with several).
It ranks trials on validation perplexity alone ("min"), as a plain Ray Tune search would.
"""

from __future__ import annotations

from types import SimpleNamespace


class RayASHA:
    """``squeezelstm.search.backends.Stopper`` backed by ``ray.tune.schedulers.AsyncHyperBandScheduler``."""

    def __init__(self, max_t: int, grace_period: int = 1, reduction_factor: float = 4, brackets: int = 1) -> None:
        from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

        if not isinstance(max_t, int) or max_t < 1:
            raise ValueError(f"max_t must be a positive integer, got max_t={max_t!r}")
        if not isinstance(grace_period, int) or not 1 <= grace_period <= max_t:
            raise ValueError(f"grace_period must be an integer in [1, max_t={max_t}], got grace_period={grace_period!r}")
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor must be > 1, got reduction_factor={reduction_factor!r}")
        self._stop = TrialScheduler.STOP
        self.scheduler = AsyncHyperBandScheduler(time_attr="training_iteration", metric="valid_ppl", mode="min",
                                                 max_t=max_t, grace_period=grace_period,
                                                 reduction_factor=reduction_factor, brackets=brackets)
        self._trials: dict[int, SimpleNamespace] = {}

    def add(self, number: int) -> None:
        trial = SimpleNamespace(trial_id=f"t{number}")
        self._trials[number] = trial
        self.scheduler.on_trial_add(None, trial)

    def result(self, number: int, epoch: int, valid_ppl: float) -> bool:
        action = self.scheduler.on_trial_result(None, self._trials[number],
                                                {"training_iteration": int(epoch), "valid_ppl": float(valid_ppl)})
        return action == self._stop

    def complete(self, number: int, epoch: int, valid_ppl: float | None) -> None:
        trial = self._trials.pop(number, None)
        if trial is None:
            return
        if valid_ppl is None:
            self.scheduler.on_trial_remove(None, trial)
        else:
            self.scheduler.on_trial_complete(None, trial, {"training_iteration": int(epoch), "valid_ppl": float(valid_ppl)})
