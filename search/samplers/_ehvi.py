"""Size-aware Bayesian optimisation: expected hypervolume improvement with the parameter count known exactly.

A cell's parameter count is an exact function of its configuration, so of the two objectives of
the search only perplexity is uncertain. ``ExactSizeEHVI`` uses that: it keeps a pool of random
in-budget candidate configurations whose sizes are already counted, models log perplexity with a
Gaussian process over (configuration, log size, training progress), and proposes the candidate
with the largest expected hypervolume improvement over the current front in (log10 params, log
perplexity). With the size known, that expectation has a closed form: for a candidate at size
``a`` and perplexity ``Y ~ N(mu, sd^2)``, the improvement is ``sum_j w_j max(0, f_j - Y)`` over the
front's staircase ``f_j`` (the best log perplexity any trial with no more parameters reached) on the
strips ``w_j`` between ``a`` and the reference, so ``E = sum_j w_j [(f_j - mu) Phi(z_j) + sd phi(z_j)]``,
``z_j = (f_j - mu) / sd``. A generic multi-objective sampler must model the size as uncertain too.
Beside the random pool, mutations of the front's configurations and of the pool's best candidates
are scored (local search): a random pool of a few hundred rarely holds a point inside a narrow good
region of a dozen-knob space, and the mutations put candidates there.

Every epoch a trial reported is an observation at its training progress ``epoch / epochs``; the
model predicts at progress 1. So pruned trials teach the model through their partial curves,
without their half-trained perplexity ever being taken for a final one (the front is built from
finished trials only). Failed and diverged trials count as the worst final perplexity seen.
Trials still running are assumed to end at their predicted mean (the "kriging believer"), so
parallel workers do not all get the same proposal.

The hyperparameters (length scales, noise) are picked from a grid by marginal likelihood, again
each time the observations have grown by ``refit_growth`` (a geometric schedule, so a long search
pays for O(log n) grid fits); in between the last grid point is kept and only refactorised.

Numpy, with the Gaussian process of ``gp.py`` (the core); ``SearchController`` (sampler
``ehvi``) feeds it observations and hands its proposal to Optuna with ``enqueue_trial``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..pareto import pareto_mask
from ..space import Choice, FloatRange, IntRange, LocalSuggester, RandomSuggester
from ._active_set import TrialRows, front_gaps, select_rows
from ._gp import GaussianProcess, fit_gp, fit_gp_ard

# The search's default sampler (``squeezelstm search``, ``run_search``, ``SearchController``): the
# fastest to the front in the replay and real benchmarks (benchmarks/README.md, "Search efficiency").
DEFAULT_SAMPLER = "ehvi"


# ----------------------------------------------------------------------------------------------
# encoding


class Encoder:
    """Maps a trial's sampled values (Optuna parameter names) and its size to a vector in [0, 1]^d.

    ``dists`` maps parameter names to ``Choice``/``IntRange``/``FloatRange``; ``families`` are the
    values of ``model.cell``. Numeric ranges scale linearly (log-uniform ones in log), numeric
    choices by their min/max, other choices one-hot; a parameter a configuration does not have (the
    argument of another family) sits at the middle. The size is ``log10 params`` scaled over
    ``size_range``.
    """

    def __init__(self, dists: Mapping[str, Any], families: Sequence[str], size_range: tuple[float, float]) -> None:
        self.columns: list[tuple[str, Any]] = list(dists.items())
        self.families = list(families)
        lo, hi = (math.log10(max(float(s), 1.0)) for s in size_range)
        self.size_lo, self.size_span = lo, max(hi - lo, 1e-9)
        self.width = (len(self.families) if len(self.families) > 1 else 0) + 1
        for _, dist in self.columns:
            self.width += len(dist.choices) if _one_hot(dist) else 1

    def encode(self, values: Mapping[str, Any], family: str, params: float) -> np.ndarray:
        out: list[float] = []
        if len(self.families) > 1:
            out += [1.0 if family == f else 0.0 for f in self.families]
        for name, dist in self.columns:
            value = values.get(name)
            if _one_hot(dist):
                out += [1.0 if value == c else 0.0 for c in dist.choices]
            else:
                out.append(0.5 if value is None else _scale(dist, value))
        out.append((math.log10(max(float(params), 1.0)) - self.size_lo) / self.size_span)
        return np.asarray(out, dtype=float)


def _one_hot(dist: Any) -> bool:
    return isinstance(dist, Choice) and not all(_is_num(c) for c in dist.choices)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scale(dist: Any, value: Any) -> float:
    if isinstance(dist, Choice):
        nums = [float(c) for c in dist.choices]
        lo, hi, log = min(nums), max(nums), min(nums) > 0 and max(nums) >= 4 * min(nums)
    else:
        lo, hi, log = float(dist.low), float(dist.high), bool(dist.log)
    v = float(value)
    if log:
        lo, hi, v = math.log(lo), math.log(hi), math.log(max(v, 1e-300))
    return 0.5 if hi <= lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)


# ----------------------------------------------------------------------------------------------
# expected hypervolume improvement with one objective known


def staircase(front: Sequence[tuple[float, float]], ref: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints ``xs`` (ascending, ending at ``ref[0]``) and levels ``f``: on ``[xs[j], xs[j+1])`` the best
    ``y`` of any point with ``x <= xs[j]`` (``ref[1]`` where there is none). Points beyond the reference are ignored."""
    pts = sorted((x, y) for x, y in front if x < ref[0] and y < ref[1])
    xs, fs = [-math.inf], [ref[1]]
    for x, y in pts:
        if y < fs[-1]:
            if x == xs[-1]:
                fs[-1] = y
            else:
                xs.append(x)
                fs.append(y)
    xs.append(ref[0])
    return np.asarray(xs, dtype=float), np.asarray(fs, dtype=float)


def expected_hvi(a: np.ndarray, mu: np.ndarray, sd: np.ndarray, front: Sequence[tuple[float, float]],
                 ref: tuple[float, float]) -> np.ndarray:
    """Expected hypervolume improvement of points at known ``x = a`` with ``y ~ N(mu, sd^2)`` (both minimised).

    The improvement of a point (a, y) is ``sum_j w_j max(0, f_j - y)`` over the staircase's strips
    right of ``a`` (``w_j`` the strip's width), so its expectation is closed-form.
    """
    a, mu, sd = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (a, mu, sd))
    xs, fs = staircase(front, ref)
    left = np.maximum(xs[:-1][None, :], a[:, None])
    width = np.clip(xs[1:][None, :] - left, 0.0, None)
    sd = np.maximum(sd, 1e-12)[:, None]
    diff = fs[None, :] - mu[:, None]
    z = diff / sd
    gain = diff * _norm_cdf(z) + sd * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return (width * gain).sum(1)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    from math import erf

    return 0.5 * (1.0 + np.vectorize(erf)(z / math.sqrt(2.0)))


# ----------------------------------------------------------------------------------------------
# the proposer


@dataclass(frozen=True)
class Observation:
    """What the proposer learns from one launched trial: its sampled values, size, status and curve."""

    values: Mapping[str, Any]
    family: str
    params: int
    status: str  # running / finished / pruned / failed / diverged
    curve: Sequence[tuple[int, float]]  # (epoch, valid perplexity)
    number: int | None = None  # the trial's number: its encoding is then computed once


class ExactSizeEHVI:
    """Proposes the next configuration: random for the first ``n_startup`` trials, then maximum EHVI.

    ``sample(seed) -> (values, family, params) | None`` draws one random configuration and returns
    its sampled values (Optuna names), family and exact size, or None when it is over budget.
    ``ref_params`` is the size reference (the budget); the perplexity reference is the worst final
    perplexity seen, times ``1 + ref_margin``. The pool holds ``pool_size`` in-budget candidates,
    refilled as candidates are proposed. With ``neighbour(values, seed)`` (same result as ``sample``;
    ``local_draw``), ``n_local`` mutations of the current front's configurations and of the pool's
    best four are scored too, and the best of pool and mutations wins (local search: it found the
    front 1.8x and 2.1x sooner in the replays, benchmarks/README.md "Session 5"). ``kernel`` is
    ``iso`` (one length for all configuration columns, picked from a grid) or ``ard`` (one per
    column, fitted by L-BFGS; slower, and no better in the replays). The GP is fitted on at most ``max_rows``
    observations (``active_set``: the front's neighbourhood, the latest trials, a random rest, thinned curves;
    None: every epoch of every closed trial, O(n^3) a fit), so a proposal's cost stays bounded as the search grows.
    """

    def __init__(self, sample: Callable[[int], tuple[dict, str, int] | None], dists: Mapping[str, Any],
                 families: Sequence[str], *, epochs: int, smallest: float, ref_params: float | None = None,
                 seed: int = 0, n_startup: int = 8, pool_size: int = 256, ref_margin: float = 0.1,
                 refit_growth: float = 1.25, kernel: str = "iso", n_local: int = 64,
                 neighbour: Callable[[Mapping[str, Any], int], tuple[dict, str, int] | None] | None = None,
                 max_draws: int = 100000, max_rows: int | None = 512) -> None:
        if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1):
            raise ValueError(f"max_rows must be an integer >= 1 or None, got max_rows={max_rows!r}")
        self.max_rows = max_rows
        self._seed = seed
        self._codes: dict[int, tuple] = {}  # trial number -> ((status, epochs), encoding, values key, TrialRows or None)
        self._seen: set[str] = set()  # the values keys of every numbered trial seen
        self._worst = math.nan
        if not isinstance(n_local, int) or isinstance(n_local, bool) or n_local < 0:
            raise ValueError(f"n_local must be an integer >= 0, got n_local={n_local!r}")
        self.n_local = n_local if neighbour is not None else 0
        self._neighbour = neighbour
        if kernel not in ("iso", "ard"):
            raise ValueError(f"kernel must be 'iso' or 'ard', got kernel={kernel!r}")
        self.kernel = kernel
        for name, value in (("n_startup", n_startup), ("pool_size", pool_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {name}={value!r}")
        if not (isinstance(ref_margin, (int, float)) and math.isfinite(ref_margin) and ref_margin >= 0):
            raise ValueError(f"ref_margin must be a finite number >= 0, got ref_margin={ref_margin!r}")
        if not (isinstance(refit_growth, (int, float)) and math.isfinite(refit_growth) and refit_growth >= 1):
            raise ValueError(f"refit_growth must be a finite number >= 1, got refit_growth={refit_growth!r}")
        self._sample = sample
        self._dists, self._families, self._smallest = dict(dists), list(families), float(smallest)
        self.encoder: Encoder | None = None
        self.epochs = int(epochs)
        self.ref_params = None if ref_params is None else float(ref_params)
        self.ref_x = math.nan
        self.n_startup = n_startup
        self.pool_size = pool_size
        self.ref_margin = ref_margin
        self.refit_growth = float(refit_growth)
        self.max_draws = max_draws
        self._hyper: tuple | None = None  # the last full fit's (length or ARD lengths, length_t, noise)
        self._grid_n = 0  # how many observations it was made on
        self._rng = np.random.default_rng(seed)
        self._pool: list[tuple[dict, str, int]] = []
        self._pool_x: list[np.ndarray] = []  # each candidate's encoding (progress 1), computed once
        self.last: dict[str, float] | None = None  # diagnostics of the last proposal

    def _fill(self) -> None:
        draws = 0
        while len(self._pool) < self.pool_size and draws < self.max_draws:
            draws += 1
            got = self._sample(int(self._rng.integers(2**63 - 1)))
            if got is not None:
                self._pool.append(got)
        if not self._pool:
            raise ValueError(f"no in-budget configuration in {draws} random draws")
        if self.encoder is None:  # without a budget, the size reference is 10% above the largest candidate
            top = self.ref_params or 1.1 * max(p for _, _, p in self._pool)
            self.ref_x = math.log10(top)
            self.encoder = Encoder(self._dists, self._families, (self._smallest, top))
        self._pool_x += [self._at_end(v, f, p) for v, f, p in self._pool[len(self._pool_x):]]

    def _at_end(self, values: Mapping[str, Any], family: str, params: float) -> np.ndarray:
        """The encoding of a configuration at training progress 1, where the model predicts."""
        return np.append(self.encoder.encode(values, family, params), 1.0)

    def _take(self, i: int) -> tuple[dict, str, int]:
        self._pool_x.pop(i)
        return self._pool.pop(i)

    def propose(self, observations: Sequence[Observation]) -> tuple[dict, str, int]:
        """The next configuration ``(values, family, params)``; it leaves the pool."""
        self._fill()
        done = [o for o in observations if o.status != "running"]
        if len(done) < self.n_startup:
            self.last = {"mode": "startup"}
            return self._take(int(self._rng.integers(len(self._pool))))
        X, y, finals, finished, n_rows = self._active(done)
        if not len(y):
            self.last = {"mode": "random (no curve yet)"}
            return self._take(int(self._rng.integers(len(self._pool))))
        gp, refit = self._fit(X, y, n_rows)
        ref = (self.ref_x, self._worst + math.log1p(self.ref_margin))
        front = [tuple(f) for f in finals]
        running = [o for o in observations if o.status == "running"]
        if running:  # kriging believer: a running trial ends at its predicted mean
            R = np.asarray([np.append(self._code(o), 1.0) for o in running])
            mu_r, _ = gp.predict(R, mean_only=True)
            front += [(math.log10(o.params), float(m)) for o, m in zip(running, mu_r)]
        mu, sd = gp.predict(np.asarray(self._pool_x))
        a = np.log10(np.asarray([p for _, _, p in self._pool], dtype=float))
        score = expected_hvi(a, mu, sd, front, ref)
        best = int(np.argmax(score))
        self.last = {"mode": "ehvi", "ehvi": float(score[best]), "mu": float(mu[best]), "sd": float(sd[best]),
                     "length": gp.length, "length_t": gp.length_t, "noise": gp.noise, "refit": refit, "rows": len(y)}
        if self.n_local:
            on_front = [o.values for o, keep in zip(finished, pareto_mask(np.asarray(finals).reshape(-1, 2))) if keep]
            local = self._local(on_front + [self._pool[i][0] for i in np.argsort(-score)[:4]], observations)
            if local:
                L = np.asarray([self._at_end(v, f, p) for v, f, p in local])
                mu_l, sd_l = gp.predict(L)
                score_l = expected_hvi(np.log10([p for _, _, p in local]), mu_l, sd_l, front, ref)
                j = int(np.argmax(score_l))
                if score_l[j] > score[best]:
                    self.last.update(mode="ehvi local", ehvi=float(score_l[j]), mu=float(mu_l[j]), sd=float(sd_l[j]))
                    return local[j]
        return self._take(best)

    def _local(self, bases: Sequence[Mapping[str, Any]], observations: Sequence[Observation]
               ) -> list[tuple[dict, str, int]]:
        """``n_local`` mutations of ``bases`` (the finished front's configurations and the pool's best), taken
        in turn, none of them a configuration already launched (running or done).

        A random pool of a few hundred rarely holds a point next to a narrow optimum (in a space of
        six families and a dozen knobs, "this family, this embedding, a high learning rate" is a
        fraction of a percent of it); mutating the incumbents puts candidates there, and EHVI still
        decides between them and the pool.
        """
        # every numbered trial went through ``_trial`` in this proposal, which keeps its key in ``_seen``
        seen = self._seen | {_values_key(o.values) for o in observations if o.number is None}
        out = []
        for i in range(self.n_local):
            got = self._neighbour(bases[i % len(bases)], int(self._rng.integers(2**63 - 1)))
            if got is not None and _values_key(got[0]) not in seen:
                out.append(got)
        return out

    def _trial(self, o: Observation) -> tuple:
        """``(encoding without progress, values key, TrialRows or None while running)`` of ``o``, computed once
        per trial number and state (an observation without a number is computed every time)."""
        hit = self._codes.get(o.number) if o.number is not None else None
        if hit is not None and hit[0] == (o.status, len(o.curve)):  # a trial number's values never change
            return hit[1:]
        code = hit[1] if hit is not None else self.encoder.encode(o.values, o.family, o.params)
        key = hit[2] if hit is not None else _values_key(o.values)
        hit = ((o.status, len(o.curve)), code, key, None if o.status == "running" else TrialRows.of(o, self.epochs))
        if o.number is not None:
            self._codes[o.number] = hit
            self._seen.add(key)
        return hit[1:]

    def _code(self, o: Observation) -> np.ndarray:
        return self._trial(o)[0]

    def _key(self, o: Observation) -> str:
        return self._trial(o)[1]

    def _active(self, done: Sequence[Observation]) -> tuple[np.ndarray, np.ndarray, list, list, int]:
        """The GP's training set from the closed trials ``done``: (X, y, front candidates (log10 params, log ppl),
        their observations, how many rows there were before the active set bounded them (``active_set``))."""
        trials = [self._trial(o)[2] for o in done]
        rows = [t.rows for t in trials]
        if not any(rows):
            return np.zeros((0, 0)), np.zeros(0), [], [], 0
        fin = np.asarray([t.final or (math.nan, math.nan) for t in trials], dtype=float).reshape(-1, 2)
        ok = ~np.isnan(fin[:, 0])
        self._worst = float(fin[ok, 1].max()) if ok.any() else max(v for r in rows for _, v in r)
        thinned = [t.thinned for t in trials]
        worst_ids = set()
        for i, t in enumerate(trials):  # failed / diverged: the worst final value seen, so their region is avoided
            if t.no_value:
                rows[i] = thinned[i] = [(1.0, self._worst)]
                worst_ids.add(i)
        gaps = front_gaps(fin)
        picked = select_rows(rows, gaps, self.max_rows, np.random.default_rng([self._seed, len(done)]),
                             thinned=thinned)
        # the curves first and the failed trials' rows last, the order the unbounded sampler always used
        picked = [p for p in picked if p[0] not in worst_ids] + [p for p in picked if p[0] in worst_ids]
        X = np.concatenate([np.column_stack([np.repeat(self._code(done[i])[None, :], len(r), 0), [t for t, _ in r]])
                            for i, r in picked])
        y = np.asarray([v for _, r in picked for _, v in r])
        cand = np.flatnonzero(gaps == 0.0)  # a superset of the front, in launch order: the staircase is the same
        return X, y, fin[cand].tolist(), [done[i] for i in cand], sum(len(r) for r in rows)

    def _fit(self, X: np.ndarray, y: np.ndarray, n_rows: int) -> tuple[GaussianProcess, bool]:
        """The GP on (X, y), and whether its hyperparameters were fitted again (grid search, or ARD's L-BFGS).
        The schedule follows ``n_rows``, all the observations, so a bounded active set still refits as the search grows."""
        if self._hyper is not None and n_rows < self.refit_growth * self._grid_n:
            try:  # keep the last full fit's setting: only refactorise
                if self.kernel == "ard":
                    return fit_gp_ard(X, y, self._hyper, steps=0), False
                length, length_t, noise = self._hyper
                return fit_gp(X, y, (length,), (length_t,), (noise,)), False
            except ValueError:  # not positive definite with the kept setting: fit again (ARD: from the prior)
                return self._fit_full(X, y, n_rows, warm=False), True
        return self._fit_full(X, y, n_rows, warm=True), True

    def _fit_full(self, X: np.ndarray, y: np.ndarray, n_rows: int, warm: bool) -> GaussianProcess:
        if self.kernel == "ard":
            gp = fit_gp_ard(X, y, self._hyper if warm else None)
            self._hyper = (gp.lengths, gp.length_t, gp.noise)
        else:
            gp = fit_gp(X, y)
            self._hyper = gp.grid_point
        self._grid_n = n_rows
        return gp


def _values_key(values: Mapping[str, Any]) -> str:
    """A hashable key of a configuration's sampled values."""
    return repr(sorted((k, repr(v)) for k, v in values.items()))


def space_dists(space: Any) -> tuple[dict[str, Any], list[str]]:
    """Every Optuna parameter a space can sample (name -> distribution) and its families."""
    dists: dict[str, Any] = dict(space.knobs)
    for family in space.families:
        for key, spec in space.family_knobs.get(family, {}).items():
            if isinstance(spec, (Choice, IntRange, FloatRange)):
                dists[f"{family}.{key}"] = spec
    return dists, list(space.families)


def _in_budget(space: Any, measure: Callable[[dict], tuple[int, int]], epochs: int | None,
               suggester: Any) -> tuple[dict, str, int] | None:
    """Sample ``space`` through ``suggester``: (Optuna values, family, exact size), None when over budget."""
    point = space.sample(suggester, epochs)
    params, flops = measure(point.config)
    if space.exceeds_budget(params, flops):
        return None
    return dict(suggester.params), point.family, int(params)


def random_draw(space: Any, measure: Callable[[dict], tuple[int, int]], epochs: int | None
                ) -> Callable[[int], tuple[dict, str, int] | None]:
    """``sample`` for ``ExactSizeEHVI``: a seeded random configuration of ``space``, None when over budget."""
    return lambda seed: _in_budget(space, measure, epochs, RandomSuggester(seed))


def local_draw(space: Any, measure: Callable[[dict], tuple[int, int]], epochs: int | None
               ) -> Callable[[Mapping[str, Any], int], tuple[dict, str, int] | None]:
    """``neighbour`` for ``ExactSizeEHVI``: a seeded mutation of known sampled values, None when over budget."""
    return lambda base, seed: _in_budget(space, measure, epochs, LocalSuggester(base, seed))


__all__ = ["DEFAULT_SAMPLER", "Encoder", "ExactSizeEHVI", "Observation", "expected_hvi", "local_draw", "random_draw",
           "space_dists", "staircase"]
