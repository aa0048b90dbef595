"""A refinement in the dashboards: the refined members as error bars on the Pareto plot (beside the search's
points and front), and the table of mean +- std."""

from __future__ import annotations

import pytest

from squeezelstm.dashboards import draw_pareto, format_refined_table, pareto_data, refined_rows, write_report
from squeezelstm.search.pareto import TrialRecord, new_refinement


def _records():
    def rec(n, params, ppl, family):
        return TrialRecord(number=n, family=family, params=params, recurrent_params=params // 4, flops=3 * params,
                           status="finished", valid_ppl=ppl, test_ppl=ppl + 1,
                           config={"model": {"cell": family, "hidden_size": 16 * (n + 1)}, "train": {"seed": 0}},
                           history=[{"epoch": 1, "valid_ppl": ppl}])
    return [rec(0, 1000, 40.0, "lstm"), rec(1, 3000, 30.0, "grouped"), rec(2, 5000, 35.0, "lstm")]


def _refined():
    ref = new_refinement("exp", _records(), seeds=2, epochs=3)
    values = {0: (36.0, 38.0), 1: (28.0, 29.0)}
    for m in ref.members:
        for run, v in zip(m.runs, values[m.number]):
            run.status, run.valid_ppl, run.test_ppl, run.epochs = "finished", v, v + 2, 3
    return ref


def test_the_pareto_data_holds_the_refined_means_and_their_std():
    data = pareto_data(_records(), refined=_refined())
    ref = data["refined"]
    assert ref["member"] == [0, 1] and ref["params"] == [1000, 3000] and ref["family"] == ["lstm", "grouped"]
    assert ref["valid_mean"] == [37.0, 28.5]
    assert ref["valid_std"] == pytest.approx([2 ** 0.5, 0.5 ** 0.5])
    assert (ref["valid_min"], ref["valid_max"], ref["seeds"], ref["on_front"]) == ([36.0, 28.0], [38.0, 29.0], [2, 2],
                                                                                   [True, True])
    assert data["refined_step"] == {"x": [1000.0, 3000.0, 3000.0], "y": [37.0, 37.0, 28.5]}
    assert data["front"]["trial"] == [0, 1]  # the search's own front is still there
    assert data["y_range"][1] >= 1.0 * (37.0 + 2 ** 0.5)
    assert pareto_data(_records())["refined"]["member"] == []


def test_the_pareto_plot_draws_error_bars_beside_the_search_points():
    fig = draw_pareto(pareto_data(_records(), refined=_refined()))
    names = [t.name for t in fig.data]
    assert "Pareto front" in names and "refined front" in names
    bars = [t for t in fig.data if t.error_y is not None and t.error_y.array is not None]
    assert len(bars) == 1 and bars[0].name.startswith("refined")
    assert list(bars[0].error_y.array) == pytest.approx([2 ** 0.5, 0.5 ** 0.5])
    assert list(bars[0].y) == [37.0, 28.5]
    assert any(t.name == "lstm" for t in fig.data)  # the search's trials per family


def test_the_table_says_mean_plus_minus_std_in_the_searchs_size_objective(tmp_path):
    rows = refined_rows(_refined())
    assert [r["member"] for r in rows] == [0, 1] and rows[0]["seeds"] == 2 and rows[0]["search_valid_ppl"] == 40.0
    text = format_refined_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["member", "family", "params"]
    assert "37.00 +- 1.41" in lines[1] and "28.50 +- 0.71" in lines[2] and "2/2" in lines[1]
    assert "1,000" in lines[1] and lines[1].rstrip().endswith("*")
    out = write_report(_records(), tmp_path / "r.html", title="t", refined=_refined())
    page = out.read_text()
    assert "Refined front" in page and "37.000 ± 1.414" in page and "error_y" in page
