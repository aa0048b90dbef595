"""The report's figure data: which points, which front, where pruned curves stop, best per budget."""

from __future__ import annotations

import math
import random

import numpy as np
import plotly.graph_objects as go
import pytest

from squeezelstm.dashboards import figures, tables
from squeezelstm.search.pareto import TrialRecord, log_hypervolume

FAMILIES = {"lstm": {}, "factorized": {"model.rank": [4, 8, 16]}, "grouped": {"model.groups": [2, 4]},
            "routed": {"model.num_cells": [2, 4], "model.routing": ["hidden", "token"]}}


def make_records(n: int = 40, seed: int = 0) -> list[TrialRecord]:
    """A made-up search: mixed families and statuses, learning curves, start/end times."""
    rng = random.Random(seed)
    records = []
    for number in range(n):
        family = rng.choice(sorted(FAMILIES))
        sampled = {"model.cell": family, "model.hidden_size": rng.choice([64, 128, 256])}
        sampled.update({k: rng.choice(v) for k, v in FAMILIES[family].items()})
        status = rng.choice(["finished"] * 3 + ["pruned", "failed", "diverged"])
        epochs = 5 if status == "finished" else rng.randint(1, 3)
        ppl, history = 400.0, []
        if status != "failed":
            for epoch in range(1, epochs + 1):
                ppl *= rng.uniform(0.6, 0.95)
                history.append({"epoch": epoch, "valid_ppl": ppl, "train_ppl": 0.9 * ppl})
        model = {"cell": family, **{k.split(".", 1)[1]: v for k, v in sampled.items() if k != "model.cell"}}
        records.append(TrialRecord(
            number=number, family=family, params=rng.randint(10**4, 10**6), status=status,
            valid_ppl=ppl if history else None, test_ppl=1.02 * ppl if history else None,
            config={"model": model}, sampled=sampled, history=history,
            started_at=1000.0 + 10 * number, ended_at=1000.0 + 10 * number + rng.uniform(5, 50)))
    return records


def brute_force_front(records):
    done = [r for r in records if r.status == "finished" and r.valid_ppl is not None]
    return sorted(
        (r for r in done
         if not any(o.params <= r.params and o.valid_ppl <= r.valid_ppl
                    and (o.params < r.params or o.valid_ppl < r.valid_ppl) for o in done)),
        key=lambda r: r.params)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pareto_data_front_and_staircase_match_brute_force(seed):
    records = make_records(seed=seed)
    data = figures.pareto_data(records, optimal_ppl=42.0)
    front = brute_force_front(records)
    assert data["front"]["trial"] == [r.number for r in front]
    assert data["optimal_ppl"] == 42.0
    # the staircase visits every front point, and between them goes right at the higher perplexity
    xs, ys = data["step"]["x"], data["step"]["y"]
    assert len(xs) == 2 * len(front) - 1
    assert list(zip(xs[::2], ys[::2])) == [(float(r.params), r.valid_ppl) for r in front]
    for i in range(1, len(xs), 2):
        assert ys[i] == ys[i - 1] and xs[i] == xs[i + 1]
    assert all(np.diff(xs) >= 0) and all(np.diff(ys) <= 0)


def test_pareto_data_fades_unfinished_and_skips_trials_without_perplexity():
    records = make_records(seed=3)
    data = figures.pareto_data(records)
    seen = {}
    for family, pts in data["families"].items():
        for trial, status, faded in zip(pts["trial"], pts["status"], pts["faded"]):
            seen[trial] = (family, status, faded)
            assert faded == (status != "finished")
    for r in records:
        if r.valid_ppl is None:
            assert r.number in data["unplotted"] and r.number not in seen
        else:
            assert seen[r.number][:2] == (r.family, r.status)
    assert data["optimal_ppl"] is None
    fig = figures.draw_pareto(data)
    assert isinstance(fig, go.Figure) and fig.layout.xaxis.type == "log"
    assert "Pareto front" in [t.name for t in fig.data]


def test_pareto_axis_ignores_astronomic_perplexities_of_diverged_trials():
    records = make_records(seed=9)
    worst = max(r.valid_ppl for r in records if r.status == "finished")
    records.append(TrialRecord(number=99, family="lstm", params=5000, status="diverged", valid_ppl=1e12))
    low, high = figures.pareto_data(records, optimal_ppl=1.5)["y_range"]
    assert high <= 1.05 * 3 * worst and low <= 0.95 * 1.5
    assert figures.pareto_data([])["y_range"] is None


def test_hypervolume_data_recomputes_in_order_of_ending_and_uses_history_as_given():
    records = make_records(seed=4)
    data = figures.hypervolume_data(records, reference=(1e7, 1000.0))
    done = sorted((r for r in records if r.status == "finished"), key=lambda r: r.ended_at)
    assert data["finished"] == list(range(1, len(done) + 1))
    assert data["hypervolume"][-1] == pytest.approx(log_hypervolume(records, 1e7, 1000.0))
    assert data["hypervolume"][2] == pytest.approx(log_hypervolume(done[:3], 1e7, 1000.0))
    assert all(np.diff(data["hypervolume"]) >= -1e-12)  # adding trials never shrinks the front
    assert data["wall_s"][0] == pytest.approx(done[0].ended_at - 1000.0)
    history = [{"finished": 2, "hypervolume": 3.0, "wall_s": 9.0}, {"finished": 1, "hypervolume": 1.0, "wall_s": 4.0}]
    given = figures.hypervolume_data(history=history)
    assert given["finished"] == [1, 2] and given["hypervolume"] == [1.0, 3.0] and given["wall_s"] == [4.0, 9.0]
    assert len(figures.draw_hypervolume(data).data) == 2


def test_learning_curves_mark_pruned_trials_at_their_last_epoch():
    records = make_records(seed=5)
    data = figures.learning_curve_data(records)
    by_trial = {c["trial"]: c for c in data["curves"]}
    pruned = [r for r in records if r.status == "pruned"]
    assert pruned, "the made-up search should have pruned trials"
    assert [s["trial"] for s in data["stops"]] == [r.number for r in pruned]
    for stop, r in zip(data["stops"], pruned):
        assert stop["epoch"] == r.history[-1]["epoch"] and stop["valid_ppl"] == r.history[-1]["valid_ppl"]
    for r in records:
        assert (r.number in by_trial) == bool(r.history)
    fig = figures.draw_learning_curves(data)
    assert fig.data[-1].name == "pruned here" and len(fig.data[-1].x) == len(pruned)


def test_parallel_coordinates_encode_categories_and_missing_arguments():
    records = make_records(seed=6)
    data = figures.parallel_coordinates_data(records)
    done = sorted((r for r in records if r.status == "finished"), key=lambda r: r.number)
    assert data["trials"] == [r.number for r in done]
    assert data["color"] == [r.valid_ppl for r in done]
    dims = {d["label"]: d for d in data["dimensions"]}
    assert data["dimensions"][0]["label"] == "model.cell" and data["dimensions"][-1]["label"] == "log10 params"
    cell = dims["model.cell"]
    assert cell["kind"] == "categorical"
    assert [cell["categories"][i] for i in cell["values"]] == [r.family for r in done]
    rank = dims["model.rank"]
    assert rank["kind"] == "numeric"
    assert rank["values"] == [float(r.sampled["model.rank"]) if "model.rank" in r.sampled else None for r in done]
    assert dims["log10 params"]["values"] == pytest.approx([math.log10(r.params) for r in done])
    fig = figures.draw_parallel_coordinates(data)
    drawn = {d.label: d for d in fig.data[0].dimensions}
    assert None not in drawn["model.rank"].values and "n/a" in drawn["model.rank"].ticktext


def test_family_budget_table_is_best_finished_ppl_within_each_budget():
    records = make_records(seed=7)
    budgets = [5e4, 2e5, 1e6]
    table = figures.family_budget_table(records, budgets)
    assert table["budgets"] == budgets
    assert table["families"] == sorted({r.family for r in records})
    for i, family in enumerate(table["families"]):
        for j, budget in enumerate(budgets):
            fits = [r for r in records if r.family == family and r.status == "finished" and r.params <= budget]
            expected = min((r.valid_ppl for r in fits), default=None)
            assert table["best"][i][j] == expected
            if expected is not None:
                assert records[table["trial"][i][j]].valid_ppl == expected
    # a bigger budget never makes the best perplexity worse
    for row in table["best"]:
        known = [v for v in row if v is not None]
        assert known == sorted(known, reverse=True)
    defaults = figures.default_budgets(records)
    assert defaults and defaults == sorted(defaults)
    with pytest.raises(ValueError, match="budgets"):
        figures.family_budget_table(records, [0])
    assert len(figures.draw_family_table(table).data[0].header.values) == len(budgets) + 1


def test_empty_search_still_gives_empty_figures():
    assert figures.pareto_data([])["front"]["trial"] == []
    assert figures.hypervolume_data([])["finished"] == []
    assert figures.family_budget_table([])["families"] == []
    for fig in (figures.draw_pareto(figures.pareto_data([])),
                figures.draw_parallel_coordinates(figures.parallel_coordinates_data([]))):
        assert isinstance(fig, go.Figure)


def test_front_rows_table_and_csv():
    records = make_records(seed=8)
    front = brute_force_front(records)
    rows = tables.front_rows(front)
    assert [r["trial"] for r in rows] == [r.number for r in front]
    for row, r in zip(rows, front):
        assert row["family"] == r.family and row["params"] == r.params and row["valid_ppl"] == r.valid_ppl
        assert row["key_args"]["hidden_size"] == r.config["model"]["hidden_size"]
        if r.family == "factorized":
            assert row["key_args"]["rank"] == r.sampled["model.rank"]
    csv_lines = tables.rows_to_csv(rows).splitlines()
    assert csv_lines[0] == ",".join(tables.COLUMNS) and len(csv_lines) == len(rows) + 1
    text = tables.format_table(rows).splitlines()
    assert text[0].split() == list(tables.COLUMNS) and len(text) == len(rows) + 1
