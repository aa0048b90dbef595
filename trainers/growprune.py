"""H-LSTM grow-and-prune phases (Dai, Yin & Jha 2018) scheduled by epoch.

``train.grow_epochs`` lists the epochs after which every layer grows (revives dormant connections
by the magnitude of their gradient summed over that epoch); ``train.prune_epochs`` those after
which it prunes by weight magnitude. The k-th of P prune phases prunes to
``prune_sparsity * k / P``, so sparsity ramps up and the epochs in between retrain the survivors.
Each layer is its own one-layer cell, so pruning is per layer (every layer reaches the target)
rather than global over the stack. The live parameter count is reported every epoch.
"""

from __future__ import annotations

from torch import nn

from .config import Config


def phase_for_epoch(config: Config, epoch: int) -> tuple[str, float] | None:
    """``("grow", 0.0)``, ``("prune", target_sparsity)`` or None for the end of ``epoch`` (1-based)."""
    t = config.train
    if epoch in t.prune_epochs and t.prune_sparsity > 0:
        phases = sorted(set(t.prune_epochs))
        k = phases.index(epoch) + 1
        return "prune", t.prune_sparsity * k / len(phases)
    if epoch in t.grow_epochs:
        return "grow", 0.0
    return None


def reset_growth_grads(model: nn.Module) -> None:
    """Forget growth gradients from earlier epochs: a grow ranks by its own epoch's gradients only,
    which also keeps a resumed run (whose checkpoint holds no gradients) identical to a whole one."""
    for layer in model.layers:
        if hasattr(layer, "clear_growth_grads"):
            layer.clear_growth_grads()


def apply_phase(model: nn.Module, kind: str, sparsity: float) -> None:
    """Run one grow or prune phase on every layer of ``model`` that supports it."""
    for layer in model.layers:
        if kind == "prune" and hasattr(layer, "prune"):
            layer.prune(sparsity)
        elif kind == "grow" and hasattr(layer, "grow"):
            layer.grow()


def spread_schedule(epochs: int, grow_phases: int, prune_phases: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(grow_epochs, prune_epochs)`` for ``epochs`` of training, in the paper's order: grow first,
    then prune in ``prune_phases`` steps spread evenly up to epoch ``epochs - 1``, so every phase is
    followed by retraining and the last epoch retrains the final survivors.

    Phases that do not fit (at most ``epochs - 1`` in all) are dropped, grow phases first; a search
    samples the phase counts and the trial's epochs fix where they fall.
    """
    for name, value in (("epochs", epochs), ("grow_phases", grow_phases), ("prune_phases", prune_phases)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "epochs" else 0):
            raise ValueError(f"{name} must be an int >= {1 if name == 'epochs' else 0}, got {name}={value!r}")
    room = epochs - 1
    prunes = min(prune_phases, room)
    grows = min(grow_phases, room - prunes)
    span = room - grows
    grow_epochs = tuple(range(1, grows + 1))
    prune_epochs = tuple(grows + (k + 1) * span // prunes for k in range(prunes)) if prunes else ()
    return grow_epochs, prune_epochs
