"""A small Gaussian process for the size-aware sampler: Matern-5/2 over encoded configurations times one over
training progress, fitted on a grid by marginal likelihood (``fit_gp``) or with one length per column
(``fit_gp_ard``, L-BFGS on torch's autograd).

Numpy for the algebra, torch for Cholesky and triangular solves (numpy has no triangular solver).
Rows of ``X`` are encoded configurations (``ehvi.Encoder``) with the training progress in the last column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

def _matern52(d2: np.ndarray) -> np.ndarray:
    r = np.sqrt(np.maximum(d2, 0.0) * 5.0)
    return (1.0 + r + r * r / 3.0) * np.exp(-r)


def _sq_dists(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unscaled squared distances between rows: over the configuration columns, and over progress (last column)."""
    xa, xb = A[:, :-1], B[:, :-1]
    d2 = (xa * xa).sum(1)[:, None] + (xb * xb).sum(1)[None, :] - 2.0 * xa @ xb.T
    return d2, (A[:, -1:] - B[:, -1:].T) ** 2


def _kernel(d2: np.ndarray, dt2: np.ndarray, length: float, length_t: float) -> np.ndarray:
    return _matern52(d2 / length**2) * _matern52(dt2 / length_t**2)


@dataclass
class GaussianProcess:
    """Zero-mean GP on standardised targets: Matern-5/2 over the configuration columns times one over progress."""

    X: np.ndarray
    y_mean: float
    y_std: float
    length: float
    length_t: float
    noise: float
    chol: np.ndarray
    alpha: np.ndarray
    grid_point: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # (length, length_t, noise) before scaling
    lengths: np.ndarray | None = None  # ARD: one length per configuration column (then ``length`` is 1 and X is pre-scaled)

    def predict(self, Xq: np.ndarray, mean_only: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean and standard deviation (of the latent function, no noise) in the target's units; with
        ``mean_only`` the standard deviation (the O(n^2)-a-point part) is not computed and is None."""
        if self.lengths is not None:
            Xq = _ard_scale(Xq, self.lengths)
        K = _kernel(*_sq_dists(Xq, self.X), self.length, self.length_t)
        mean = K @ self.alpha
        if mean_only:
            return self.y_mean + self.y_std * mean, None
        v = _solve_lower(self.chol, K.T) if len(self.X) else np.zeros((0, len(Xq)))
        var = np.maximum(1.0 - (v * v).sum(0), 1e-12)
        return self.y_mean + self.y_std * mean, self.y_std * np.sqrt(var)


def fit_gp(
    X: np.ndarray,
    y: np.ndarray,
    lengths: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
    lengths_t: Sequence[float] = (0.5, 1.0, 2.0),
    noises: Sequence[float] = (1e-3, 1e-2, 1e-1),
) -> GaussianProcess:
    """Fit by picking the (length, progress length, noise) of the grid with the highest marginal likelihood.

    ``X`` rows are encoded configurations with training progress in the last column; lengths
    scale with the square root of the number of configuration columns.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise ValueError(f"fit_gp needs matching non-empty X (n, d) and y (n,), got {X.shape} and {y.shape}")
    mean, std = float(y.mean()), float(y.std()) or 1.0
    z = (y - mean) / std
    scale = math.sqrt(max(X.shape[1] - 1, 1))
    d2, dt2 = _sq_dists(X, X)  # once: every setting of the grid only rescales them
    eye = np.eye(len(X))
    best: tuple[float, tuple[float, float, float, np.ndarray, np.ndarray]] | None = None  # loglik, (setting, L, L^-1 z)
    for length in lengths:
        for length_t in lengths_t:
            K0 = _kernel(d2, dt2, length * scale, length_t)
            for noise in noises:
                L_t, info = torch.linalg.cholesky_ex(torch.from_numpy(K0 + (noise + 1e-8) * eye))
                if int(info) != 0:  # not positive definite at this setting
                    continue
                L = L_t.numpy()
                w = _solve_lower(L, z)
                loglik = -0.5 * float(w @ w) - float(np.log(np.diag(L)).sum())
                if best is None or loglik > best[0]:
                    best = (loglik, (length, length_t, noise, L, w))
    if best is None:
        raise ValueError("fit_gp: no kernel setting of the grid gave a positive definite matrix")
    length, length_t, noise, L, w = best[1]
    alpha = _solve_lower(L, w, transpose=True)  # K^-1 z = L^-T (L^-1 z)
    return GaussianProcess(X, mean, std, length * scale, length_t, noise, L, alpha, (length, length_t, noise))


def _ard_scale(X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Configuration columns divided by their lengths; the progress column (last) unchanged."""
    out = np.array(X, dtype=float, copy=True)
    out[:, :-1] /= lengths
    return out


def fit_gp_ard(
    X: np.ndarray,
    y: np.ndarray,
    init: tuple[np.ndarray, float, float] | None = None,
    steps: int = 40,
) -> GaussianProcess:
    """Fit with one length per configuration column (automatic relevance determination).

    Maximises the marginal likelihood plus log-normal priors on the lengths (centred on
    ``sqrt(2) + log(d) / 2`` in log space, as in Hvarfner et al. 2024, so lengths grow with the
    dimension as the grid's ``sqrt(d)`` scaling does), with L-BFGS on torch's autograd, from ``init``
    ``(lengths, length_t, noise)`` (a warm start from the last fit) or from the prior's centre.
    A column that hardly moves perplexity (an unused family argument) gets a long length; one that
    does (the learning rate) a short one, which an isotropic kernel over ~20 columns cannot express.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise ValueError(f"fit_gp_ard needs matching non-empty X (n, d) and y (n,), got {X.shape} and {y.shape}")
    mean, std = float(y.mean()), float(y.std()) or 1.0
    d = X.shape[1] - 1
    mu0 = math.sqrt(2.0) + 0.5 * math.log(max(d, 1))
    if init is None:
        p0 = np.concatenate([np.full(d, mu0), [0.0, math.log(1e-2)]])
    else:
        p0 = np.concatenate([np.log(np.asarray(init[0], dtype=float)), [math.log(init[1]), math.log(init[2])]])
    p = _ard_optimise(X, (y - mean) / std, p0, mu0, steps) if steps > 0 else p0
    p = np.clip(p, -6.0, 6.0)
    p[d + 1] = min(max(p[d + 1], math.log(1e-5)), math.log(1.0))
    if not np.all(np.isfinite(p)):
        p = p0
    lengths, length_t, noise = np.exp(p[:d]), float(np.exp(p[d])), float(np.exp(p[d + 1]))
    Xs = _ard_scale(X, lengths)
    d2, dt2 = _sq_dists(Xs, Xs)
    L_t, info = torch.linalg.cholesky_ex(torch.from_numpy(_kernel(d2, dt2, 1.0, length_t) + (noise + 1e-6) * np.eye(len(X))))
    if int(info) != 0:
        raise ValueError("fit_gp_ard: the fitted kernel is not positive definite")
    L = L_t.numpy()
    alpha = _solve_lower(L, _solve_lower(L, (y - mean) / std), transpose=True)
    return GaussianProcess(Xs, mean, std, 1.0, length_t, noise, L, alpha, (math.nan, length_t, noise), lengths)


def _ard_optimise(X: np.ndarray, z: np.ndarray, p0: np.ndarray, mu0: float, steps: int) -> np.ndarray:
    """L-BFGS from ``p0`` = (log lengths, log length_t, log noise) on the negative log marginal likelihood of
    the standardised targets ``z`` plus the priors; returns the last point the line search accepted."""
    Xt, zt = torch.from_numpy(X), torch.from_numpy(z)
    d = X.shape[1] - 1
    theta = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    eye = torch.eye(len(X), dtype=torch.float64)
    dt = Xt[:, -1:] - Xt[:, -1:].T

    def loss() -> torch.Tensor:
        ls = torch.exp(theta[:d])
        A = Xt[:, :-1] / ls
        sq = (A * A).sum(1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * A @ A.T).clamp_min(1e-12)
        dt2 = (dt / torch.exp(theta[d])) ** 2
        K = _matern52_t(d2) * _matern52_t(dt2.clamp_min(1e-12)) + (torch.exp(theta[d + 1]) + 1e-6) * eye
        L, info = torch.linalg.cholesky_ex(K)
        if int(info) != 0:
            return torch.tensor(math.inf, dtype=torch.float64)
        w = torch.linalg.solve_triangular(L, zt[:, None], upper=False)[:, 0]
        nll = 0.5 * (w @ w) + torch.log(torch.diagonal(L)).sum()
        prior = ((theta[:d] - mu0) ** 2).sum() / (2 * 3.0)  # log-normal, sigma^2 = 3
        prior = prior + (theta[d] ** 2) / 2.0 + ((theta[d + 1] - math.log(1e-2)) ** 2) / (2 * 4.0)
        return nll + prior

    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss()
        if torch.isfinite(value):
            value.backward()
        return value

    try:
        opt.step(closure)
    except RuntimeError:  # a singular step inside the line search: keep the last good point
        pass
    return theta.detach().numpy().copy()


def _matern52_t(d2: torch.Tensor) -> torch.Tensor:
    r = torch.sqrt(d2 * 5.0)
    return (1.0 + r + r * r / 3.0) * torch.exp(-r)


def _solve_lower(L: np.ndarray, B: np.ndarray, transpose: bool = False) -> np.ndarray:
    """``L^-1 B`` (or ``L^-T B``) for lower-triangular ``L``: a triangular solve, O(n^2) a column, where
    ``np.linalg.solve`` would factorise ``L`` again in O(n^3) (numpy has no triangular solver; torch does)."""
    Lt = torch.from_numpy(np.ascontiguousarray(L))
    Bt = torch.from_numpy(np.ascontiguousarray(B, dtype=float))
    vec = Bt.ndim == 1
    if vec:
        Bt = Bt[:, None]
    if transpose:
        out = torch.linalg.solve_triangular(Lt.T, Bt, upper=True)
    else:
        out = torch.linalg.solve_triangular(Lt, Bt, upper=False)
    out = out.numpy()
    return out[:, 0] if vec else out
__all__ = ["GaussianProcess", "fit_gp", "fit_gp_ard"]
