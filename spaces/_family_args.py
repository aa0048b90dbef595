"""Small argument checks shared by the family classes' ``check_args`` classmethods."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from ._base import check_positive_int, layer_input_sizes


def check_sizes(input_size: Any, hidden_size: Any, num_layers: Any) -> tuple[int, int, int]:
    """Validate the three ``nn.LSTM`` sizes (ValueError naming the bad one); return them."""
    return (
        check_positive_int("input_size", input_size),
        check_positive_int("hidden_size", hidden_size),
        check_positive_int("num_layers", num_layers),
    )


def per_layer_ints(name: str, value: Any, num_layers: int) -> tuple[int | tuple[int, ...], list[int]]:
    """Normalise an int-or-list family argument.

    Returns ``(normalised, per_layer)``: ``normalised`` is the int itself, or a tuple with one
    positive int per layer; ``per_layer`` always has ``num_layers`` entries. ValueError otherwise.
    """
    if value is None:
        raise ValueError(f"{name} is required, got {name}=None")
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ValueError(f"{name} given per layer must have num_layers={num_layers} entries, got {name}={list(value)!r}")
        items = tuple(check_positive_int(name, _plain_int(v)) for v in value)
        return items, list(items)
    v = check_positive_int(name, _plain_int(value))
    return v, [v] * num_layers


def _plain_int(value: Any) -> Any:
    """numpy / torch integer scalars (as samplers may hand out) become plain ints; anything else is left as is."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def per_layer_checked(name: str, value: Any, input_size: Any, hidden_size: Any, num_layers: Any,
                      problem: Callable[[int, int, int, int], str | None]) -> int | tuple[int, ...]:
    """Check the sizes and an int-or-list family argument, layer by layer; return it normalised.

    ``problem(layer, m, n, v)`` says what is wrong with value ``v`` on layer ``layer`` (input width
    ``m``, hidden size ``n``), or None; the ValueError reads ``"<name>=<v>[ on layer i] <problem>"``.
    """
    input_size, hidden_size, num_layers = check_sizes(input_size, hidden_size, num_layers)
    normalised, per_layer = per_layer_ints(name, value, num_layers)
    for layer, (m, v) in enumerate(zip(layer_input_sizes(input_size, hidden_size, num_layers), per_layer)):
        text = problem(layer, m, hidden_size, v)
        if text is not None:
            where = f" on layer {layer}" if num_layers > 1 else ""
            raise ValueError(f"{name}={v}{where} {text}")
    return normalised
