"""Pareto maths (search/pareto/_maths.py, search/pareto/_records.py) against brute force on random points, 2-D and 3-D."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezelstm.search.pareto import dominates, hypervolume, non_dominated_sort, pareto_mask, to_minimization
from squeezelstm.search.pareto import TrialRecord, log_hypervolume, pareto_front


def brute_dominates(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def brute_front(points) -> list[int]:
    ok = [i for i, p in enumerate(points) if not any(math.isnan(v) for v in p)]
    return [i for i in ok if not any(brute_dominates(points[j], points[i]) for j in ok if j != i)]


def brute_ranks(points) -> dict[int, int]:
    """Rank by definition: 0 if nothing dominates it, else 1 + the highest rank among its dominators."""
    ok = [i for i, p in enumerate(points) if not any(math.isnan(v) for v in p)]
    ranks: dict[int, int] = {}

    def rank(i: int) -> int:
        if i not in ranks:
            doms = [j for j in ok if brute_dominates(points[j], points[i])]
            ranks[i] = 0 if not doms else 1 + max(rank(j) for j in doms)
        return ranks[i]

    for i in ok:
        rank(i)
    return ranks


def brute_hypervolume(points, ref) -> float:
    """Inclusion-exclusion over subsets: exact for a handful of points."""
    pts = [p for p in points if all(x < r for x, r in zip(p, ref))]
    total = 0.0
    for k in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, k):
            corner = [max(c) for c in zip(*subset)]
            total += (-1) ** (k + 1) * math.prod(r - c for r, c in zip(ref, corner))
    return total


def grid_hypervolume(points, ref: int) -> int:
    """Count the unit cells of an integer grid [0, ref)^m that some point dominates (weakly)."""
    pts = np.asarray(points)
    m = pts.shape[1]
    cells = np.stack(np.meshgrid(*[np.arange(ref)] * m, indexing="ij"), axis=-1).reshape(-1, m)
    covered = np.zeros(len(cells), dtype=bool)
    for p in pts:
        covered |= np.all(cells >= p, axis=1)
    return int(covered.sum())


points_2d = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=0, max_size=14)
points_3d = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), min_size=0, max_size=10)


@settings(max_examples=150, deadline=None)
@given(st.one_of(points_2d, points_3d))
def test_pareto_mask_and_sort_match_brute_force(points):
    arr = np.asarray(points, dtype=float).reshape(len(points), -1 if points else 2)
    mask = pareto_mask(arr)
    assert sorted(np.flatnonzero(mask).tolist()) == brute_front(points)
    ranks = brute_ranks(points)
    fronts = non_dominated_sort(arr)
    got = {int(i): r for r, front in enumerate(fronts) for i in front}
    assert got == ranks
    assert all(len(f) > 0 for f in fronts)


def test_nan_rows_are_never_on_a_front_and_left_out_of_the_sort():
    pts = np.array([[1.0, 5.0], [np.nan, 0.0], [2.0, 2.0], [0.5, np.nan], [3.0, 3.0]])
    assert pareto_mask(pts).tolist() == [True, False, True, False, False]
    fronts = non_dominated_sort(pts)
    assert [f.tolist() for f in fronts] == [[0, 2], [4]]


@settings(max_examples=120, deadline=None)
@given(points_2d.filter(bool))
def test_hypervolume_2d_matches_grid_count(points):
    assert hypervolume(np.asarray(points, dtype=float), [7, 7]) == pytest.approx(grid_hypervolume(points, 7))


@settings(max_examples=80, deadline=None)
@given(points_3d.filter(bool))
def test_hypervolume_3d_matches_grid_count(points):
    assert hypervolume(np.asarray(points, dtype=float), [6, 6, 6]) == pytest.approx(grid_hypervolume(points, 6))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion_on_random_real_points(m):
    rng = np.random.default_rng(m)
    for _ in range(40):
        n = int(rng.integers(1, 8))
        pts = rng.uniform(0, 1, size=(n, m))
        ref = rng.uniform(0.6, 1.2, size=m)
        assert hypervolume(pts, ref) == pytest.approx(brute_hypervolume(pts.tolist(), ref.tolist()), rel=1e-9, abs=1e-12)


def test_hypervolume_edge_cases():
    assert hypervolume(np.zeros((0, 2)), [1, 1]) == 0.0
    assert hypervolume(np.array([[2.0, 0.0]]), [1, 1]) == 0.0  # outside the reference box
    assert hypervolume(np.array([[1.0, 0.0]]), [1, 1]) == 0.0  # on the boundary: nothing strictly inside
    assert hypervolume(np.array([[0.0, 0.0], [0.0, 0.0]]), [1, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        hypervolume(np.zeros((3, 3)), [1, 1])


def test_dominates_and_to_minimization():
    assert dominates([1, 2], [1, 3]) and not dominates([1, 3], [1, 3]) and not dominates([0, 4], [1, 3])
    vals = np.array([[1.0, 10.0], [2.0, 20.0]])
    assert to_minimization(vals, [("params", "min"), ("acc", "max")]).tolist() == [[1.0, -10.0], [2.0, -20.0]]
    with pytest.raises(ValueError, match="direction"):
        to_minimization(vals, [("params", "min"), ("acc", "up")])


def _record(number, params, ppl, status="finished"):
    return TrialRecord(number=number, family="lstm", params=params, status=status, valid_ppl=ppl)


def test_records_front_holds_finished_trials_only():
    records = [
        _record(0, 100, 50.0),
        _record(1, 50, 10.0, status="pruned"),  # half-trained value: must never reach the front
        _record(2, 200, 40.0),
        _record(3, 300, 45.0),  # dominated by 2
        _record(4, 10, float("nan")),
        _record(5, 20, 5.0, status="failed"),
        _record(6, 30, None, status="running"),
    ]
    assert [r.number for r in pareto_front(records)] == [0, 2]
    hv = log_hypervolume(records, ref_params=1000, ref_ppl=100)
    only = log_hypervolume([records[0], records[2]], ref_params=1000, ref_ppl=100)
    assert hv == pytest.approx(only) and hv > 0
    expected = brute_hypervolume([[math.log10(100), math.log(50)], [math.log10(200), math.log(40)]], [3.0, math.log(100)])
    assert hv == pytest.approx(expected)


def test_the_front_reads_the_objectives_as_data(monkeypatch):
    # FLOPs instead of parameters as the size objective: the records' size moves the front
    import dataclasses

    from squeezelstm.search.pareto import _records

    recs = [TrialRecord(0, "lstm", params=100, flops=900, status="finished", valid_ppl=50.0),
            TrialRecord(1, "lstm", params=200, flops=300, status="finished", valid_ppl=40.0),
            TrialRecord(2, "lstm", params=150, flops=100, status="finished", valid_ppl=60.0)]
    assert [r.number for r in pareto_front(recs)] == [0, 1]  # trial 2 is larger and worse than trial 0
    by_flops = [dataclasses.replace(r, size="flops") for r in recs]
    assert [r.number for r in pareto_front(by_flops)] == [2, 1]
    assert _records.objectives("flops") == (("flops", "min"), ("valid_ppl", "min"))
    by_cells = [dataclasses.replace(r, size="recurrent", recurrent_params=p) for r, p in zip(recs, (50, 10, 20))]
    assert [r.number for r in pareto_front(by_cells)] == [1]
    with pytest.raises(ValueError, match="unknown size='cells'"):
        _records.objectives("cells")
    monkeypatch.setattr(_records, "OBJECTIVES", (("params", "min"), ("valid_ppl", "max")))
    assert [r.number for r in pareto_front(recs)] == [0, 2]
