"""NT-ASGD: non-monotonically triggered averaged SGD (Merity, Keskar & Socher 2017, AWD-LSTM).

Training runs plain SGD until the validation loss stops improving: at the end of epoch k it
switches to averaging when more than ``nonmono`` losses are recorded and the current one is worse
than the best of all but the last ``nonmono`` (awd-lstm-lm's ``val_loss > min(best_val_loss[:-nonmono])``).
After the switch ``ParameterAverage`` keeps the running mean of the SGD iterates (Polyak averaging)
exactly as ``torch.optim.ASGD(t0=0, lambd=0)`` keeps its ``ax``, which awd-lstm-lm used: the mean of the
iterates from the second step after the switch on (torch's ``mu`` lags one step). Every later
evaluation, and the test, uses the averaged weights; training goes on from the raw ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn


def should_trigger(losses: Sequence[float], nonmono: int) -> bool:
    """True when the last of ``losses`` (validation losses so far, one an epoch) is worse than the
    best of all but the last ``nonmono`` of them, given more than ``nonmono`` are recorded."""
    if nonmono < 1:
        raise ValueError(f"nonmono must be >= 1, got nonmono={nonmono!r}")
    return len(losses) > nonmono and losses[-1] > min(losses[:-nonmono])


class ParameterAverage:
    """Running mean of a model's parameters over the optimizer steps since it was started (torch's ``ax``)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.steps = 0
        self.average: dict[str, Tensor] = {}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters in after a step: ``avg += mu (p - avg)``, ``mu = 1 / max(1, steps - 1)``
        (so the first two steps copy, as ``torch.optim.ASGD`` with ``t0=0`` does)."""
        self.steps += 1
        mu = 1.0 / max(1, self.steps - 1)
        for name, p in self.model.named_parameters():
            if mu == 1.0:
                self.average[name] = p.detach().clone()
            else:
                self.average[name].add_(p.detach() - self.average[name], alpha=mu)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; the raw ones come back after it."""
        if not self.steps:
            yield
            return
        params = dict(self.model.named_parameters())
        raw = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.average[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(raw[name])

    def state_dict(self) -> dict:
        return {"steps": self.steps, "average": {k: v.clone() for k, v in self.average.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.average = {k: v.clone() for k, v in state["average"].items()}
