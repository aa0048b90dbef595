"""Tabular data through pandas: a search's trials as a DataFrame, and the front tables and curve files
read and written through it byte for byte as the csv-module code wrote them."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import math
from pathlib import Path

import pandas as pd
import pytest

from squeezelstm.dashboards import tables
from squeezelstm.search import records_dataframe, trials_dataframe
from squeezelstm.search.backends import CurveTable, SearchResult, resolve_paths, write_records
from squeezelstm.search.pareto import TrialRecord, pareto_front

ROOT = Path(__file__).resolve().parents[2]


def _records() -> list[TrialRecord]:
    def curve(*ppl):
        return [{"epoch": e, "valid_ppl": v, "train_ppl": v + 1.0} for e, v in enumerate(ppl, 1)]

    return [
        TrialRecord(2, "grouped", 900, 50, "finished", 120.0, 125.0, sampled={"model.hidden_size": 32, "model.groups": 4},
                    history=curve(200.0, 120.0)),
        TrialRecord(0, "lstm", 1000, 80, "finished", 100.0, 104.0, sampled={"model.hidden_size": 32}, history=curve(150.0, 100.0)),
        TrialRecord(1, "factorized", 500, 30, "pruned", 300.0, sampled={"model.hidden_size": 16, "model.rank": 3},
                    history=curve(300.0)),
        TrialRecord(3, "lstm", 2000, 90, "finished", 110.0, sampled={"model.hidden_size": 64}, history=curve(180.0, 110.0)),
        TrialRecord(4, "routed", 400, 20, "running", 250.0, sampled={"model.hidden_size": 16, "model.routing": "token"},
                    history=curve(250.0)),
    ]


def test_records_dataframe_has_one_row_a_trial_with_every_searched_value_and_the_curve():
    records = _records()
    frame = records_dataframe(records)
    assert list(frame["trial"]) == [0, 1, 2, 3, 4]
    assert list(frame.columns) == [
        "trial", "status", "family", "model.groups", "model.hidden_size", "model.rank", "model.routing",
        "params", "recurrent_params", "flops", "valid_ppl", "test_ppl", "epochs",
        "valid_ppl_epoch_1", "train_ppl_epoch_1", "valid_ppl_epoch_2", "train_ppl_epoch_2", "on_front"]
    row = frame.set_index("trial").loc[2]
    assert (row["status"], row["family"], row["model.groups"], row["params"], row["flops"]) == ("finished", "grouped", 4, 900, 50)
    assert (row["valid_ppl_epoch_1"], row["valid_ppl_epoch_2"], row["train_ppl_epoch_2"]) == (200.0, 120.0, 121.0)
    assert math.isnan(frame.set_index("trial").loc[1, "valid_ppl_epoch_2"])  # pruned after one epoch
    assert pd.isna(frame.set_index("trial").loc[0, "model.rank"])  # not searched by its family
    assert set(frame.loc[frame["on_front"], "trial"]) == {r.number for r in pareto_front(records)} == {0, 2}
    assert frame["on_front"].dtype == bool and frame["params"].dtype == "int64"
    assert records_dataframe([]).columns.tolist()[:3] == ["trial", "status", "family"]


def test_trials_dataframe_reads_a_running_or_finished_search_and_the_result_has_it(tmp_path):
    records = _records()
    paths = resolve_paths("exp", tmp_path)
    paths.experiment_dir.mkdir(parents=True)
    write_records(paths.records_file, records, {"space": "made-up"})  # what the runner rewrites after every change
    frame = trials_dataframe("exp", storage=tmp_path)
    pd.testing.assert_frame_equal(frame, records_dataframe(records))
    result = SearchResult("exp", records, pareto_front(records), paths)
    pd.testing.assert_frame_equal(result.trials_dataframe(), frame)
    with pytest.raises(FileNotFoundError, match="no search named 'other'"):
        trials_dataframe("other", storage=tmp_path)


# -- the front tables: the csv-module code they replaced, kept here as the reference ----------------

def _csv_reference(rows):
    names = tables.columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([tables.cell_text(row.get(c)) for c in names])
    return buffer.getvalue()


def _table_reference(rows):
    names = tables.columns(rows)
    cells = [list(names)] + [[tables.cell_text(row.get(c)) for c in names] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(names))]
    numeric = {"trial", "params", "recurrent_params", "flops", "valid_ppl", "test_ppl"}
    return "\n".join(
        "  ".join(t.rjust(w) if n in numeric else t.ljust(w) for t, w, n in zip(line, widths, names)).rstrip()
        for line in cells)


FRONTS = [
    [],
    tables.front_rows(pareto_front(_records())),
    [{"trial": 7, "family": "routed", "key_args": {"hidden_size": 8, "routing": 'a,"b"'}, "params": 12,
      "valid_ppl": math.inf, "test_ppl": None},
     {"trial": 12345, "family": "x y", "key_args": {}, "params": 10**9, "valid_ppl": 1.23456, "test_ppl": float("nan")}],
]


@pytest.mark.parametrize("rows", FRONTS, ids=["empty", "front", "odd"])
def test_front_csv_and_table_are_byte_for_byte_what_they_were(rows):
    assert tables.rows_to_csv(rows) == _csv_reference(rows)
    assert tables.format_table(rows) == _table_reference(rows)


# -- the recorded-curve tables ----------------------------------------------------------------------

def _record_curves():
    spec = importlib.util.spec_from_file_location("record_curves", ROOT / "benchmarks" / "record_curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_curve_table_reads_as_the_csv_module_read_it():
    path = ROOT / "benchmarks" / "data" / "default_curves.csv.gz"
    with gzip.open(path, "rt", newline="") as f:
        reference = CurveTable.from_rows(list(csv.DictReader(f)))
    assert CurveTable.from_csv(path).curves == reference.curves
    assert _record_curves().recorded_indices(path) == {c.index for c in reference.curves}


def test_curve_rows_are_written_as_the_csv_module_wrote_them():
    rc = _record_curves()
    rows = [{"index": 3, "family": "routed", "sampled": '{"model.routing": "token", "x": 1}', "params": 41126,
             "flops": 22784, "epoch": e, "valid_ppl": v, "train_ppl": None if e == 0 else 137.07023552253548,
             "epoch_s": 0.847, "status": "finished"} for e, v in ((0, None), (1, 143.8137053788006), (2, 1e-07))]
    ours, reference = io.StringIO(newline=""), io.StringIO(newline="")
    rc.write_curve_rows(ours, rows, header=True)
    rc.write_curve_rows(ours, rows[1:], header=False)
    writer = csv.DictWriter(reference, fieldnames=rc.COLUMNS)
    writer.writeheader()
    for row in rows + rows[1:]:
        writer.writerow(row)
    assert ours.getvalue() == reference.getvalue()
