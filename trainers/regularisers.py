"""Embedding dropout and activation regularisation (AR/TAR), as AWD-LSTM defines them.

Merity, Keskar & Socher (2017), "Regularizing and Optimizing LSTM Language Models":

- embedding dropout (Gal & Ghahramani 2016): whole *words* are dropped, i.e. rows of the embedding
  matrix, with probability ``p``, the kept rows scaled by ``1 / (1 - p)``; one mask per forward call,
  so a dropped word is dropped at every position of the window (awd-lstm-lm's ``embedded_dropout``).
  A tied decoder still reads the undropped matrix.
- AR: ``alpha * mean(h_t ** 2)`` over the last layer's *dropped* outputs;
- TAR: ``beta * mean((h_t - h_{t-1}) ** 2)`` over the last layer's outputs *before* dropout, between
  consecutive steps of the window.

Both penalties are added to the mean token cross-entropy during training only; the reported
losses and perplexities stay the plain cross-entropy.
"""

from __future__ import annotations

import torch
from torch import Tensor


def embedding_dropout(embedded: Tensor, tokens: Tensor, vocab_size: int, p: float, training: bool,
                      generator: torch.Generator | None = None) -> Tensor:
    """``embedded`` (T, N, E) = embedding(``tokens`` (T, N)) with whole vocabulary rows dropped.

    Equal to looking ``tokens`` up in ``weight * mask`` with a (V, 1) row mask, without building
    the masked (V, E) matrix: the mask is drawn for all V words, then gathered at the tokens.
    """
    if not training or p <= 0.0:
        return embedded
    keep = torch.empty(vocab_size, device=embedded.device, dtype=embedded.dtype)
    keep.bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)
    return embedded * keep[tokens].unsqueeze(-1)


def activation_penalty(dropped: Tensor, alpha: float) -> Tensor:
    """AR: ``alpha * mean(dropped ** 2)`` of the last layer's dropped outputs (T, N, H)."""
    return alpha * dropped.float().pow(2).mean()


def temporal_activation_penalty(raw: Tensor, beta: float) -> Tensor:
    """TAR: ``beta * mean((raw[t] - raw[t-1]) ** 2)`` over the last layer's undropped outputs (T, N, H).

    A one-step window has no consecutive pair and costs nothing.
    """
    if raw.size(0) < 2:
        return raw.new_zeros((), dtype=torch.float32)
    return beta * (raw[1:] - raw[:-1]).float().pow(2).mean()
