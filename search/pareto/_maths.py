"""Pareto maths on an (n, m) array of objective values: pure numpy, no framework.

Objectives are described as a list of ``(metric, "min" | "max")`` pairs; ``to_minimization`` turns
any such table into an all-minimise array so every function below assumes minimisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Directions = Sequence[tuple[str, str]]


def to_minimization(values: np.ndarray, objectives: Directions) -> np.ndarray:
    """Return ``values`` (n, m) with every "max" column negated, so smaller is better everywhere."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(objectives):
        raise ValueError(f"values must have shape (n, {len(objectives)}), got {values.shape}")
    signs = []
    for name, direction in objectives:
        if direction not in ("min", "max"):
            raise ValueError(f"direction of {name!r} must be 'min' or 'max', got {direction!r}")
        signs.append(1.0 if direction == "min" else -1.0)
    return values * np.asarray(signs)


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """True if ``a`` is no worse than ``b`` in every objective and better in at least one (minimisation)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return bool(np.all(a <= b) and np.any(a < b))


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points`` (n, m), minimisation.

    Duplicated points are all kept (neither dominates the other). Rows containing NaN are never
    on the front.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D array (n, m), got shape {pts.shape}")
    n = pts.shape[0]
    valid = ~np.isnan(pts).any(axis=1)
    mask = valid.copy()
    for i in range(n):
        if not mask[i]:
            continue
        # (n, m) comparisons of every valid point against point i
        no_worse = np.all(pts[valid] <= pts[i], axis=1)
        better = np.any(pts[valid] < pts[i], axis=1)
        if np.any(no_worse & better):
            mask[i] = False
    return mask


def non_dominated_sort(points: np.ndarray) -> list[np.ndarray]:
    """Split the rows of ``points`` into successive fronts (indices), best first; NaN rows are left out."""
    pts = np.asarray(points, dtype=float)
    remaining = np.flatnonzero(~np.isnan(pts).any(axis=1)) if pts.size else np.arange(0)
    fronts = []
    while remaining.size:
        mask = pareto_mask(pts[remaining])
        fronts.append(remaining[mask])
        remaining = remaining[~mask]
    return fronts


def hypervolume(points: np.ndarray, reference: Sequence[float]) -> float:
    """Volume dominated by ``points`` (n, m) and bounded by ``reference`` (m,), minimisation.

    Points not strictly better than the reference in every objective contribute nothing. Exact:
    a sweep for m = 2, recursive slicing over the last objective for m > 2.
    """
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return 0.0
    if pts.ndim != 2 or pts.shape[1] != ref.shape[0]:
        raise ValueError(f"points must have shape (n, {ref.shape[0]}), got {pts.shape}")
    pts = pts[np.all(pts < ref, axis=1) & ~np.isnan(pts).any(axis=1)]
    if pts.shape[0] == 0:
        return 0.0
    pts = pts[pareto_mask(pts)]
    return _hv(pts, ref)


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    m = pts.shape[1]
    if m == 1:
        return float(ref[0] - pts[:, 0].min())
    if m == 2:
        order = np.argsort(pts[:, 0], kind="stable")
        volume, best_y = 0.0, ref[1]
        for x, y in pts[order]:
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(volume)
    # slice along the last objective: between consecutive levels, the (m-1)-D volume is constant
    order = np.argsort(pts[:, -1], kind="stable")
    pts = pts[order]
    levels = np.append(pts[:, -1], ref[-1])
    volume = 0.0
    for k in range(pts.shape[0]):
        depth = levels[k + 1] - levels[k]
        if depth > 0:
            sub = pts[: k + 1, :-1]
            volume += depth * _hv(sub[pareto_mask(sub)], ref[:-1])
    return float(volume)
