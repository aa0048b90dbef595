"""The sampler's bounded active set: which observations the GP is fitted on when there are too many for all."""

from __future__ import annotations

import math

import numpy as np
import pytest

from squeezelstm.search.samplers._active_set import TrialRows, curve_rows, front_gaps, select_rows, thin
from squeezelstm.search.space import Choice, FloatRange
from squeezelstm.search.samplers import ExactSizeEHVI, Observation


def test_front_gaps_are_the_distance_to_the_best_of_everything_no_larger():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, (60, 2))
    pts[5] = np.nan
    gaps = front_gaps(pts)
    for i, (x, y) in enumerate(pts):
        if math.isnan(x):
            assert gaps[i] == math.inf
            continue
        best = min(v for u, v in pts if not math.isnan(u) and u <= x)
        assert gaps[i] == pytest.approx(y - best)
    on_front = [i for i, (x, y) in enumerate(pts) if not math.isnan(x)
                and not any(u <= x and v <= y and (u, v) != (x, y) for u, v in pts if not math.isnan(u))]
    assert set(on_front) <= set(np.flatnonzero(gaps == 0.0))


def test_thin_keeps_the_first_last_and_evenly_spaced_rows():
    rows = [(e / 13, float(e)) for e in range(1, 14)]
    assert thin(rows, 3) == [rows[0], rows[6], rows[12]]
    assert thin(rows[:2], 3) == rows[:2]
    assert curve_rows([(1, 100.0), (2, math.nan), (3, None), (4, math.e)], 4) == [(0.25, math.log(100.0)), (1.0, 1.0)]


def test_select_rows_is_everything_while_it_fits_then_bounded_and_relevant():
    rng = np.random.default_rng(1)
    n = 400
    rows = [[(e / 13, float(rng.normal())) for e in range(1, 14)] for _ in range(n)]
    rows[7] = []  # running or no value: never selected
    finals = rng.uniform(0, 1, (n, 2))
    finals[::3] = np.nan  # pruned trials: no final value
    gaps = front_gaps(finals)
    assert select_rows(rows[:20], gaps[:20], 1000, rng) == [(i, r) for i, r in enumerate(rows[:20]) if r]
    thinned = select_rows(rows[:100], gaps[:100], 1000, rng)  # 1287 rows, 297 once thinned
    assert sum(len(r) for _, r in thinned) == 3 * 99 and all(r == thin(rows[i], 3) for i, r in thinned)
    picked = select_rows(rows, gaps, 300, np.random.default_rng(2))
    ids = [i for i, _ in picked]
    assert sum(len(r) for _, r in picked) == 300 and ids == sorted(ids) and 7 not in ids
    front = [i for i in np.flatnonzero(gaps == 0.0)]
    assert set(front) <= set(ids)  # the front is always in
    assert set(range(n - 20, n)) - {7} <= set(ids)  # so are the latest trials
    old = [i for i in ids if i < n - 60 and gaps[i] > np.nanquantile(gaps[np.isfinite(gaps)], 0.5)]
    assert old  # and some of the rest, for coverage
    assert select_rows(rows, gaps, 300, np.random.default_rng(2)) == picked  # seeded
    assert sum(len(r) for _, r in select_rows(rows, gaps, 301, rng)) == 301  # the last trial's latest rows fill up
    with pytest.raises(ValueError, match="max_rows"):
        select_rows(rows, gaps, 0, rng)


def test_trial_rows_stand_a_failed_trial_for_the_worst_value():
    obs = Observation({}, "a", 1000, "failed", [(1, math.nan)])
    assert TrialRows.of(obs, 4).no_value and TrialRows.of(obs, 4).final is None
    done = Observation({}, "a", 1000, "finished", [(1, 200.0), (2, 150.0)])
    assert TrialRows.of(done, 2).final == pytest.approx((3.0, math.log(150.0)))


def test_the_sampler_fits_at_most_max_rows_and_still_proposes_where_the_improvement_is():
    rng = np.random.default_rng(3)
    dists = {"lr": FloatRange(1e-3, 1e-1, log=True), "width": Choice((8, 16, 32, 64))}

    def ppl(lr, width):
        return 100.0 + 200.0 * abs(math.log(lr / 0.02)) + 400.0 / width

    obs = []
    for i in range(120):
        lr, w = float(np.exp(rng.uniform(math.log(1e-3), math.log(1e-1)))), int(rng.choice([8, 16, 32, 64]))
        final = ppl(lr, w)
        status = "finished" if i % 3 else "pruned"
        curve = [(e, final * (1 + 1.0 / e)) for e in range(1, (6 if status == "finished" else 2) + 1)]
        obs.append(Observation({"lr": lr, "width": w}, "a", 1000 * w, status, curve, i))
    pool = [({"lr": lr, "width": 16}, "a", 16000) for lr in (0.0012, 0.003, 0.02, 0.08)]
    proposals = {}
    for max_rows in (None, 64):
        it = iter(pool)
        sampler = ExactSizeEHVI(lambda _s: next(it, None), dists, ["a"], epochs=6, smallest=1000, ref_params=100_000,
                                pool_size=len(pool), max_draws=len(pool), n_local=0, max_rows=max_rows)
        proposals[max_rows] = sampler.propose(obs)[0]["lr"]
        assert sampler.last["mode"] == "ehvi"
        assert sampler.last["rows"] == (2 * 40 + 6 * 80 if max_rows is None else max_rows)
    assert proposals[None] == proposals[64] == 0.02
    with pytest.raises(ValueError, match="max_rows"):
        ExactSizeEHVI(lambda _s: None, dists, ["a"], epochs=1, smallest=1, max_rows=0)
