"""Weight drop: DropConnect (Wan et al. 2013) on the hidden-to-hidden weights, as AWD-LSTM applies it.

Merity, Keskar & Socher (2017) drop entries of the recurrent matrix ``W_hh`` with probability
``p`` (the survivors scaled by ``1 / (1 - p)``) once per forward call: one mask serves every
time step of a BPTT window, so the recurrence itself stays the same function across the window
and the fused kernels still run. Evaluation uses the weights as they are.

Each family keeps its recurrent weights differently; each family layer's ``recurrent_weight`` names
the parameter and the entries of it that the recurrence reads (``recurrent_region`` asks it):

    lstm, grouped, routed   weight_hh, all of it ((4n, n), (g, 4n/g, n/g), (k, 4s, s))
    nn.LSTM (fast_lstm)     weight_hh_l0, all of it
    factorized              weight_in[:, m:], the h half of the shared bottleneck W1 (r, m + n)
    restricted              weight[rows_h, :n], the pool rows the h side gathers; pool rows that the
                            x side shares are one parameter, so a dropped one is dropped for both
    hidden (H-LSTM)         w1_hh, the h part of every gate's first layer (4d, n)

The swap goes through ``torch.func.functional_call``, so no module is altered and the
``state_dict`` keeps its keys; with ``p == 0`` nothing is drawn and the forward is the plain one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from squeezelstm.spaces.lstm import fused_lstm


def recurrent_region(cell: str, layer: nn.Module) -> tuple[str, Tensor | None]:
    """``(parameter name in layer, 0/1 mask of its recurrent entries or None for all)`` of one layer.

    ``layer`` is one entry of ``LanguageModel.layers``: a one-layer family stack or an ``nn.LSTM``.
    """
    if isinstance(layer, nn.LSTM):
        return "weight_hh_l0", None
    if not hasattr(layer, "layers") or not hasattr(layer.layers[0], "recurrent_weight"):
        raise ValueError(f"weight drop: no recurrent weights known for model.cell={cell!r}")
    name, region = layer.layers[0].recurrent_weight()  # each family's layer knows its own
    return f"layers.0.{name}", region


def drop_connect(weight: Tensor, p: float, generator: torch.Generator | None,
                 region: Tensor | None = None) -> Tensor:
    """``weight`` with each entry of ``region`` (all if None) zeroed with probability ``p``, the rest of
    the region scaled by ``1 / (1 - p)``; entries outside the region are left as they are."""
    keep = torch.empty_like(weight).bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)
    if region is not None:
        keep = torch.where(region, keep, torch.ones_like(keep))
    return weight * keep


def call_with_weight_drop(layer: nn.Module, cell: str, p: float, generator: torch.Generator | None,
                          args: tuple, kwargs: dict[str, Any] | None = None) -> Any:
    """``layer(*args, **kwargs)`` with its recurrent weights DropConnect-ed by one fresh mask."""
    name, region = recurrent_region(cell, layer)
    weight = layer.get_parameter(name)
    dropped = drop_connect(weight, p, generator, region)
    if isinstance(layer, nn.LSTM):
        # torch's own kernel on the four tensors directly: swapping a parameter of nn.LSTM makes it
        # rebuild its flat weight list on every call (and cuDNN warn that they are not contiguous).
        x, (h, c) = args
        weights = [layer.weight_ih_l0, dropped] + ([layer.bias_ih_l0, layer.bias_hh_l0] if layer.bias else [])
        out, (h, c) = fused_lstm(x, (h[0], c[0]), weights)
        return out, (h.unsqueeze(0), c.unsqueeze(0))
    return functional_call(layer, {name: dropped}, args, kwargs or {}, strict=False)
