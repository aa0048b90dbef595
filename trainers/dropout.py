"""Dropout with masks drawn from an explicit generator; ``locked`` shares one mask across time.

Locked (variational) dropout (Gal & Ghahramani 2016; awd-lstm-lm's ``LockedDropout``) drops the
same units at every step of a window, which regularises recurrent models better than fresh masks.
The explicit generator lets a checkpoint restore the exact mask sequence on resume.
"""

from __future__ import annotations

import torch
from torch import Tensor


def dropout(x: Tensor, p: float, training: bool, locked: bool = False,
            generator: torch.Generator | None = None) -> Tensor:
    """Inverted dropout of ``x`` (T, N, D); with ``locked`` one (1, N, D) mask serves all T steps."""
    if not training or p <= 0.0:
        return x
    shape = (1, *x.shape[1:]) if locked else x.shape
    mask = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1.0 - p, generator=generator)
    return x * mask.div_(1.0 - p)
