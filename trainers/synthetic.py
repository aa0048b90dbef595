"""The built-in synthetic corpus: a Markov chain over tokens whose entropy rate is known exactly.

The source is an order-1 Markov chain over ``V`` tokens. Row ``i`` of its transition matrix is

    P[i, :] = (1 - mix) * zipf[perm_i] + mix * zipf[perm_0]        zipf[k] ∝ (k + 1) ** -s

a Zipf law with exponent ``s`` over a row-specific random permutation of the vocabulary, blended
with one shared Zipf law (so the unigram distribution is Zipf-like too, as in text). Every entry is
positive, so the chain is irreducible and aperiodic with a unique stationary distribution ``pi``
(``pi P = pi``). Its entropy rate, the best cross-entropy any model can reach, is exact:

    H = - sum_i pi_i sum_j P_ij ln P_ij      (nats per token);  optimal perplexity = exp(H)

Sampling runs ``K`` independent chains side by side (vectorised numpy, one explicit Generator),
each started from ``pi`` and laid end to end, so the stream is stationary throughout; at the
``K - 1`` joins the next token is drawn from ``pi`` instead of ``P`` (a negligible, documented
perturbation of the rate: about ``K / N`` of the tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MarkovSource:
    """A sampled chain: ``transition`` (V, V) rows sum to 1, ``stationary`` (V,), exact ``entropy_rate`` in nats."""

    transition: np.ndarray
    stationary: np.ndarray
    entropy_rate: float

    @property
    def optimal_ppl(self) -> float:
        return math.exp(self.entropy_rate)

    @property
    def unigram_entropy(self) -> float:
        """Entropy (nats) of the stationary distribution: what the best unigram model reaches."""
        p = self.stationary
        return float(-(p * np.log(p)).sum())


def zipf_weights(vocab_size: int, exponent: float) -> np.ndarray:
    """Normalised Zipf law ``(k + 1) ** -exponent`` over ``vocab_size`` ranks."""
    w = np.arange(1, vocab_size + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


def stationary_distribution(transition: np.ndarray, tol: float = 1e-13, max_iter: int = 100_000) -> np.ndarray:
    """The stationary distribution of a positive stochastic matrix, by power iteration."""
    v = transition.shape[0]
    pi = np.full(v, 1.0 / v)
    for _ in range(max_iter):
        nxt = pi @ transition
        nxt /= nxt.sum()
        if np.abs(nxt - pi).max() < tol:
            return nxt
        pi = nxt
    return pi  # pragma: no cover - positive chains converge geometrically


def entropy_rate(transition: np.ndarray, stationary: np.ndarray) -> float:
    """``-sum_i pi_i sum_j P_ij ln P_ij`` in nats per token."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.where(transition > 0, np.log(transition), 0.0)
    return float(-(stationary * (transition * logp).sum(axis=1)).sum())


def make_source(vocab_size: int, zipf_exponent: float = 1.1, mix: float = 0.3, seed: int = 0) -> MarkovSource:
    """Draw the chain's transition matrix from ``seed`` (see the module docstring)."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got vocab_size={vocab_size!r}")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got mix={mix!r}")
    rng = np.random.default_rng(seed)
    zipf = zipf_weights(vocab_size, zipf_exponent)
    shared = zipf[rng.permutation(vocab_size)]
    # Row i's own Zipf law: argsort of uniforms gives V independent random permutations at once.
    perms = np.argsort(rng.random((vocab_size, vocab_size)), axis=1)
    transition = (1.0 - mix) * zipf[perms] + mix * shared[None, :]
    transition /= transition.sum(axis=1, keepdims=True)
    pi = stationary_distribution(transition)
    return MarkovSource(transition, pi, entropy_rate(transition, pi))


def sample(source: MarkovSource, num_tokens: int, seed: int = 0, chains: int | None = None) -> np.ndarray:
    """Draw ``num_tokens`` tokens (int64) from ``source`` with ``chains`` parallel chains laid end to end."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got num_tokens={num_tokens!r}")
    rng = np.random.default_rng(seed)
    k = chains or max(1, min(64, num_tokens // 2000))
    length = -(-num_tokens // k)
    cum = np.cumsum(source.transition, axis=1)
    cum_pi = np.cumsum(source.stationary)
    v = cum.shape[0]
    u = rng.random((length, k))
    out = np.empty((length, k), dtype=np.int64)
    state = np.minimum(np.searchsorted(cum_pi, u[0], side="right"), v - 1)
    out[0] = state
    for t in range(1, length):
        # Inverse-CDF draw for every chain at once: count the row's CDF entries below u.
        state = np.minimum((cum[state] <= u[t, :, None]).sum(axis=1), v - 1)
        out[t] = state
    return out.T.reshape(-1)[:num_tokens]


def sequence_log_loss(source: MarkovSource, tokens: np.ndarray) -> float:
    """Mean ``-ln P(x_t | x_{t-1})`` over a token stream: a Monte-Carlo estimate of the entropy rate."""
    tokens = np.asarray(tokens)
    return float(-np.log(source.transition[tokens[:-1], tokens[1:]]).mean())
