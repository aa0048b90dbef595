"""``squeezelstm replay``: the replay simulation as a command, on the shipped default table at a few trials."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from squeezelstm.search.backends import CurveTable, check_table
from squeezelstm.search.cli import main
from squeezelstm.search.cli._replay import table_space
from squeezelstm.search.space import load_space, model_cost

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "benchmarks" / "data" / "default_curves.csv.gz"


def run(capsys, *argv):
    try:
        code = main(["replay", *argv])
    except SystemExit as exc:  # argparse's own errors (an invalid choice) exit from the parser
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err.strip()


def one_line_error(code, err, *fragments):
    assert code == 2, err
    assert err.startswith("squeezelstm: error:") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(scope="module")
def rows():
    return pd.read_csv(TABLE, dtype=str, keep_default_na=False)


def test_json_carries_front_hypervolume_and_driver_cost(capsys):
    code, out, err = run(capsys, "--table", str(TABLE), "--trials", "14", "--workers", "4", "--seed", "3", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["space"] == "default" and data["trials"] == 14 and sum(data["statuses"].values()) == 14
    assert data["proposals"] == 14 and data["results"] >= 14  # one report per epoch trained, one completion per trial
    for name in ("proposal", "result"):
        p50, p95, top = (data[f"{name}_latency_{k}_s"] for k in ("p50", "p95", "max"))
        assert 0 <= p50 <= p95 <= top < 60
    assert data["peak_rss_mb"] > 10
    trace = data["hypervolume_trace"]
    assert len(trace) == data["statuses"].get("finished", 0) + data["statuses"].get("pruned", 0)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(trace, trace[1:]))  # compute and HV never go down
    assert trace[-1] == [data["compute_epochs"], data["hypervolume"]]
    assert 0 < data["hypervolume"] <= data["best_hypervolume"] + 1e-12
    front = data["front"]
    assert front and all(f["params"] <= 100000 for f in front)
    assert len({f["curve"] for f in front}) == len(front)  # each recorded configuration once
    params = [f["params"] for f in front]
    ppl = [f["valid_ppl"] for f in front]
    assert params == sorted(params) and ppl == sorted(ppl, reverse=True)  # a front: smaller is worse
    recorded = {int(r["index"]): int(r["params"]) for r in pd.read_csv(TABLE, dtype=str).to_dict("records")}
    assert all(recorded[f["curve"]] == f["params"] for f in front)  # each front member is a recorded configuration


def test_text_summary_and_the_same_seed_replays_the_same_search(capsys):
    argv = ("--table", str(TABLE), "--trials", "10", "--workers", "3", "--sampler", "tpe", "--pruner", "median")
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    for fragment in ("front found", "hypervolume against simulated compute", "proposal latency", "p95",
                     "result handling", "peak RSS", "tpe + median"):
        assert fragment in out, out
    _, a, _ = run(capsys, *argv, "--json")
    _, b, _ = run(capsys, *argv, "--json")
    a, b = json.loads(a), json.loads(b)
    assert a["hypervolume_trace"] == b["hypervolume_trace"] and a["front"] == b["front"]


def test_missing_table(capsys, tmp_path):
    code, _, err = run(capsys, "--table", str(tmp_path / "nope.csv.gz"), "--trials", "3", "--workers", "2")
    one_line_error(code, err, "no curve table", "nope.csv.gz")


def test_missing_columns(capsys, tmp_path, rows):
    path = tmp_path / "cut.csv"
    rows.drop(columns=["valid_ppl", "params"]).to_csv(path, index=False)
    code, _, err = run(capsys, "--table", str(path), "--trials", "3", "--workers", "2", "--space", "default")
    one_line_error(code, err, "lacks the column(s)", "params", "valid_ppl")


def test_empty_table(capsys, tmp_path, rows):
    path = tmp_path / "empty_curves.csv.gz"
    rows.iloc[:0].to_csv(path, index=False)
    code, _, err = run(capsys, "--table", str(path), "--trials", "3", "--workers", "2")
    one_line_error(code, err, "no recorded curve")


def test_not_a_table(capsys, tmp_path):
    path = tmp_path / "junk.csv.gz"
    path.write_bytes(b"\x00\x01 not gzip at all")
    code, _, err = run(capsys, "--table", str(path), "--trials", "3", "--workers", "2")
    one_line_error(code, err, "unreadable", "junk.csv.gz")
    text = tmp_path / "zero.csv.gz"
    with gzip.open(text, "wt") as f:
        f.write("")
    code, _, err = run(capsys, "--table", str(text), "--trials", "3", "--workers", "2")
    one_line_error(code, err, "zero.csv.gz")


def test_bad_value_in_a_column(capsys, tmp_path, rows):
    path = tmp_path / "bad.csv"
    bad = rows.copy()
    bad.loc[0, "params"] = "many"
    bad.to_csv(path, index=False)
    code, _, err = run(capsys, "--table", str(path), "--trials", "3", "--workers", "2", "--space", "default")
    one_line_error(code, err, "bad value", "many")


def test_a_space_the_table_does_not_match(capsys, tmp_path, rows):
    # the same space with another vocabulary: every recorded size is off (embedding and decoder grow)
    code, _, err = run(capsys, "--table", str(TABLE), "--trials", "3", "--workers", "2", "--set", "data.vocab_size=500")
    one_line_error(code, err, "does not match space 'default'", "recorded with")
    # a table of families the space does not search
    path = tmp_path / "other.csv"
    other = rows.copy()
    other["family"] = "mystery"
    other.to_csv(path, index=False)
    code, _, err = run(capsys, "--table", str(path), "--trials", "3", "--workers", "2", "--space", "default")
    one_line_error(code, err, "mystery", "none of space 'default'")


@pytest.mark.parametrize("flag, value", [("--trials", "0"), ("--workers", "0"), ("--budget", "-1"),
                                         ("--sampler", "nope"), ("--mapping", "nope"), ("--proposal-time", "-1"),
                                         ("--proposal-time", "abc"), ("--proposal-time", "inf")])
def test_bad_settings(capsys, flag, value):
    argv = {"--trials": "3", "--workers": "2", flag: value}
    code, _, err = run(capsys, "--table", str(TABLE), *[x for kv in argv.items() for x in kv])
    assert code == 2 and "\n" not in err and flag.strip("-") in err, err


def test_space_from_the_table_name_and_check_table_accepts_its_own_space():
    assert table_space(Path("x/default_curves.csv.gz"), None) == "default"
    assert table_space(Path("warandpeace_small_curves.csv.gz"), None) == "warandpeace_small"
    assert table_space(Path("mine.csv"), None) == "default"
    assert table_space(Path("default_curves.csv.gz"), "ptb") == "ptb"
    space = load_space("default")
    check_table(CurveTable.from_csv(TABLE), space, lambda c: model_cost(c, 200))  # no error
