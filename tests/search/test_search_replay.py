"""The replay benchmark machinery on a tiny made-up curve table (no recorded data, no training)."""

from __future__ import annotations

import csv
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from squeezelstm.search.space import RandomSuggester
from squeezelstm.search.backends import Curve, CurveTable, replay_search
from squeezelstm.search.config import SearchConfig
from squeezelstm.search.pareto import log_hypervolume_of
from squeezelstm.search.space import load_space, model_cost

VOCAB = 200
EPOCHS = 4
ROOT = Path(__file__).resolve().parents[2]


def _made_up_table(n: int = 40, seed: int = 0) -> tuple[object, CurveTable]:
    """In-budget configurations of the default space with curves that improve with size and epochs."""
    space = load_space("default", ["train.epochs=4"])
    rng = np.random.default_rng(seed)
    curves = []
    i = 0
    while len(curves) < n:
        point = space.sample(RandomSuggester(1000 + i))
        i += 1
        params, flops = model_cost(point.config, VOCAB)
        if params > space.max_params:
            continue
        final = 70.0 + 5.0e5 / params * (1.0 + 0.2 * rng.random())
        valid = tuple(final * (1.0 + 0.5 / e) for e in range(1, 7))
        curves.append(Curve(index=len(curves), family=point.family, sampled=point.sampled, params=params, flops=flops,
                            valid=valid, epoch_s=tuple(0.5 + 0.1 * e for e in range(1, 7)), status="finished"))
    return space, CurveTable(curves)


@pytest.fixture(scope="module")
def made_up():
    return _made_up_table()


def test_nearest_returns_exact_recorded_config_and_keeps_family(made_up):
    _, table = made_up
    for curve in table.curves[:10]:
        assert table.nearest(curve.family, curve.sampled, curve.params) is curve
    grouped = [c for c in table.curves if c.family == "grouped"]
    assert grouped
    probe = dict(grouped[0].sampled, **{"train.lr": 0.02})
    assert table.nearest("grouped", probe, grouped[0].params).family == "grouped"
    with pytest.raises(ValueError, match="family='nope'"):
        table.nearest("nope", {}, 10)


def write_table_csv(curves, path, extra_rows=()):
    """``curves`` as a recorded-curves CSV (gzip) at ``path``, every epoch 0.5 s, then ``extra_rows`` as they
    are; returns ``path``."""
    import json

    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "family", "sampled", "params", "flops", "epoch", "valid_ppl", "train_ppl", "epoch_s", "status"])
        for c in curves:
            for e, v in enumerate(c.valid, 1):
                w.writerow([c.index, c.family, json.dumps(c.sampled), c.params, c.flops, e, v, "", 0.5, c.status])
        w.writerows(extra_rows)
    return path


def test_csv_round_trip_and_truncated_curves(tmp_path, made_up):
    _, table = made_up
    path = write_table_csv(table.curves[:3], tmp_path / "t.csv.gz",
                           extra_rows=[[99, "lstm", "{}", 5000, 10, 1, 150.0, "", 0.5, "diverged"]])
    back = CurveTable.from_csv(path)
    assert [c.valid for c in back.curves[:3]] == [pytest.approx(c.valid) for c in table.curves[:3]]
    assert back.curves[-1].final(1) == 150.0 and back.curves[-1].final(2) is None
    with pytest.raises(FileNotFoundError):
        CurveTable.from_csv(tmp_path / "missing.csv")


def test_true_front_and_best_hypervolume(made_up):
    _, table = made_up
    front = table.true_front(EPOCHS)
    assert front and all(a.params < b.params and a.final(EPOCHS) > b.final(EPOCHS) for a, b in zip(front, front[1:]))
    ref = (100000.0, float(VOCAB))
    best = table.best_hypervolume(EPOCHS, ref)
    assert best == pytest.approx(log_hypervolume_of([(c.params, c.final(EPOCHS)) for c in front], ref))
    assert best > log_hypervolume_of([(front[0].params, front[0].final(EPOCHS))], ref) > 0


@pytest.mark.parametrize("sampler,pruner", [("random", "none"), ("tpe", "pareto"), ("nsga2", "median")])
def test_replay_counts_compute_and_never_beats_the_table(made_up, sampler, pruner):
    space, table = made_up
    res = replay_search(table, SearchConfig(space, sampler=sampler, pruner=pruner, seed=1, epochs=EPOCHS),
                        workers=3, budget=40, vocab_size=VOCAB)
    ref = (float(space.max_params), float(VOCAB))
    best = table.best_hypervolume(EPOCHS, ref)
    epochs_trained = sum(t["epochs"] for t in res.trials)
    assert res.compute == epochs_trained
    assert 40 <= res.compute < 40 + 3 * EPOCHS  # trials in flight at the budget still end
    assert res.trace and all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(res.trace, res.trace[1:]))
    assert 0 < res.trace[-1][1] <= best + 1e-9
    for t in res.trials:
        assert t["status"] in ("finished", "pruned")
        assert t["epochs"] == EPOCHS if t["status"] == "finished" else t["epochs"] < EPOCHS
    if pruner == "none":
        assert all(t["status"] == "finished" for t in res.trials)
    assert res.found(table.true_front(EPOCHS)) <= len(table.true_front(EPOCHS))


def test_replay_is_deterministic_for_a_seed(made_up):
    space, table = made_up
    config = SearchConfig(space, sampler="tpe", pruner="pareto", seed=3, epochs=EPOCHS)
    a = replay_search(table, config, workers=2, budget=30, vocab_size=VOCAB)
    b = replay_search(table, config, workers=2, budget=30, vocab_size=VOCAB)
    assert a.trace == b.trace and [t["curve"] for t in a.trials] == [t["curve"] for t in b.trials]


def test_replay_seconds_cost_and_bad_arguments(made_up):
    space, table = made_up
    res = replay_search(table, SearchConfig(space, sampler="random", pruner="none", seed=0, epochs=2),
                        workers=2, budget=10, cost="seconds", vocab_size=VOCAB)
    assert res.compute == pytest.approx(sum(0.5 + 0.1 + 0.5 + 0.2 for t in res.trials))
    with pytest.raises(ValueError, match="cost"):
        replay_search(table, SearchConfig(space), cost="hours", vocab_size=VOCAB)
    with pytest.raises(ValueError, match="workers"):
        replay_search(table, SearchConfig(space), workers=0, vocab_size=VOCAB)


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ray_asha_stopper_stops_the_worse_half_at_a_rung(made_up):
    asha = _bench_module("replay").RayASHA(max_t=EPOCHS, grace_period=1, reduction_factor=2)
    for n in range(4):
        asha.add(n)
    # rung at epoch 1: the first result sets the cutoff, a worse one is stopped, a better one continues
    assert asha.result(0, 1, 100.0) is False
    assert asha.result(1, 1, 150.0) is True
    assert asha.result(2, 1, 90.0) is False
    space, table = made_up
    res = replay_search(table, SearchConfig(space, sampler="random", pruner="none", seed=0, epochs=EPOCHS),
                        workers=2, budget=40, vocab_size=VOCAB, stopper=_bench_module("replay").RayASHA(max_t=EPOCHS, reduction_factor=2))
    assert any(t["status"] == "pruned" for t in res.trials)


def test_search_efficiency_script_end_to_end(tmp_path, made_up, capsys):
    import json

    _, table = made_up
    path = write_table_csv(table.curves, tmp_path / "curves.csv.gz")
    bench = _bench_module("search_efficiency")
    out_json, out_html = tmp_path / "e.json", tmp_path / "e.html"
    assert bench.main(["--table", str(path), "--seeds", "2", "--budget", "24", "--ref-ppl", "vocab",
                       "--strategies", "random", "ehvi+pareto (default)", "--json", str(out_json),
                       "--html", str(out_html)]) == 0
    printed = capsys.readouterr().out
    assert "| random |" in printed and "| ehvi+pareto (default) |" in printed
    payload = json.loads(out_json.read_text())
    assert payload["configurations"] == len(table.curves) and len(payload["runs"]["random"]) == 2
    assert payload["best_hv"] == pytest.approx(table.best_hypervolume(EPOCHS, (100000.0, float(VOCAB))))
    assert out_html.stat().st_size > 1000
    with pytest.raises(ValueError, match="unknown strategies"):
        bench.main(["--table", str(path), "--strategies", "nope"])


def test_fresh_mapping_never_repeats_a_curve_while_the_family_has_unused_ones(made_up):
    space, table = made_up
    res = replay_search(table, SearchConfig(space, sampler="tpe", pruner="none", seed=2, epochs=EPOCHS),
                        workers=2, budget=60, vocab_size=VOCAB, fresh=True)
    seen: dict[str, set] = {}
    for t in res.trials:
        family_left = {c.index for c in table.by_family[t["family"]]} - seen.get(t["family"], set())
        if family_left:
            assert t["curve"] not in seen.get(t["family"], set())
        seen.setdefault(t["family"], set()).add(t["curve"])
    curve = table.curves[0]
    assert table.nearest(curve.family, curve.sampled, curve.params, exclude={curve.index}) is not curve


def test_incremental_front_has_the_hypervolume_of_all_points():
    from squeezelstm.search.backends._replay_loop import _add_to_front

    rng = np.random.default_rng(5)
    points = [(float(p), float(v)) for p, v in zip(rng.integers(1000, 100000, 300), rng.uniform(80, 300, 300))]
    points += [points[3], (points[7][0], points[7][1] + 1.0)]  # a duplicate and a point dominated at equal size
    front: list = []
    ref = (100000.0, 310.0)
    for i, pt in enumerate(points):
        front = _add_to_front(front, pt)
        if i % 37 == 0 or i == len(points) - 1:
            assert log_hypervolume_of(front, ref) == pytest.approx(log_hypervolume_of(points[: i + 1], ref), rel=1e-12, abs=1e-15)
    assert all(not (q[0] <= p[0] and q[1] <= p[1]) for p in front for q in front if q != p)


def test_a_space_without_train_epochs_trains_the_trainers_default(made_up):
    # A space file may leave train.epochs out: its trials then train TrainConfig's default (4 epochs).
    # The replay, the controller's pruning cut-off and the EHVI sampler must count the same epochs
    # (they once assumed 1, so every replayed trial "finished" after its first epoch).
    from squeezelstm.search.space import locate_space, parse_space
    from squeezelstm.trainers.config import TrainConfig

    raw, _ = locate_space("default")
    del raw["train"]["epochs"]
    space = parse_space(raw)
    assert space.trial_epochs() == TrainConfig().epochs == EPOCHS
    assert space.trial_epochs(2) == 2
    _, table = made_up
    res = replay_search(table, SearchConfig(space, sampler="ehvi", pruner="none", seed=0), workers=2, budget=24, vocab_size=VOCAB)
    assert res.trials and all(t["epochs"] == EPOCHS for t in res.trials if t["status"] == "finished")
    assert res.compute == sum(t["epochs"] for t in res.trials) >= 24
