"""Every size of a model in one call, exact before training: total, recurrent and FLOPs, dense and live.

``model_sizes(config, vocab_size)`` is what a size objective reads (``--size total|recurrent|flops``):

- ``params``: every parameter (``count_model_parameters``); ``recurrent_params``: the cells alone;
  ``flops``: matmul multiply-adds per token (``count_model_flops``);
- ``live_*``: the same after H-LSTM grow-and-prune. Each prune phase masks the smallest live weights
  of a layer until ``int(round(s * W))`` of its W prunable weights are masked, and a grow revives
  ``int(round(0.5 * dormant))`` of them (``spaces/hidden.py``); both counts depend only on the
  schedule, not on the weights, so ``live_masked`` replays the schedule on counts alone and the
  live sizes are exact before training (a test checks them against trained models). A pruned
  weight costs one parameter and one multiply-add, so the live counts drop by the masked number.

For families that do not prune, ``live_*`` equal the dense counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from squeezelstm.spaces import count_parameters
from squeezelstm.spaces.families import FAMILY_TABLE

from .config import Config
from .growprune import phase_for_epoch
from .model import _layer_sizes, count_model_flops, count_model_parameters

# What ``HiddenLayerLSTM.grow()`` revives by default (its ``GROW_FRACTION``); kept in step by a test.
GROW_FRACTION = 0.5


@dataclass(frozen=True)
class ModelSizes:
    """Exact sizes of one trainer model; ``asdict`` gives the plain dict a trial records."""

    params: int
    recurrent_params: int
    flops: int
    live_params: int
    live_recurrent_params: int
    live_flops: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def prunable_weights(in_size: int, hidden: int, gate_hidden: int) -> int:
    """Entries of one H-LSTM layer's masked matrices: w1_ih (4d, m), w1_hh (4d, n), w2 (4, n, d)."""
    d = gate_hidden
    return 4 * d * in_size + 4 * d * hidden + 4 * hidden * d


def live_masked(config: Config, weights: int) -> int:
    """Masked weights of a layer with ``weights`` prunable ones after ``config.train.epochs`` epochs of
    the grow-and-prune schedule (0 with no schedule): the trainer's phases replayed on counts."""
    masked = 0
    for epoch in range(1, config.train.epochs + 1):
        phase = phase_for_epoch(config, epoch)
        if phase is None:
            continue
        kind, sparsity = phase
        if kind == "prune":
            masked = max(masked, int(round(sparsity * weights)))
        else:
            masked -= int(round(GROW_FRACTION * masked))
    return masked


def model_sizes(config: Config, vocab_size: int) -> ModelSizes:
    """All the sizes of ``build_model(config, vocab_size)`` after its planned training, without tensors."""
    m = config.model
    recurrent = 0
    masked = 0
    for i, (in_size, hidden) in enumerate(_layer_sizes(m)):
        args = m.layer_family_args(i)
        recurrent += count_parameters(m.cell, in_size, hidden, 1, m.bias, **args)
        family = FAMILY_TABLE[m.cell]
        if family.grows_and_prunes:
            masked += live_masked(config, prunable_weights(in_size, hidden, {**family.defaults, **args}["gate_hidden"]))
    params = count_model_parameters(config, vocab_size)
    flops = count_model_flops(config, vocab_size)
    return ModelSizes(params=params, recurrent_params=recurrent, flops=flops, live_params=params - masked,
                      live_recurrent_params=recurrent - masked, live_flops=flops - masked)
