"""Export rules (knee, max-params, max-ppl) on made-up trials, and the config file they write."""

from __future__ import annotations

import json

import pytest

from squeezelstm.search.cli import main
from squeezelstm.search.export import export_trial, knee_point, load_records, pick
from squeezelstm.search.pareto import TrialRecord
from squeezelstm.search.backends import resolve_paths, write_records

CONFIG = {
    "data": {"corpus": "synthetic", "vocab_size": 30, "train_tokens": 2000, "valid_tokens": 400, "test_tokens": 400},
    "model": {"cell": "lstm", "hidden_size": 16, "num_layers": 1},
    "train": {"epochs": 1, "batch_size": 10, "bptt": 10, "device": "cpu"},
}


def rec(number, params, ppl, status="finished", test=None):
    return TrialRecord(number=number, family="lstm", params=params, status=status, valid_ppl=ppl,
                       test_ppl=test if test is not None else (ppl + 1 if status == "finished" else None),
                       config=CONFIG, sampled={"model.hidden_size": 16},
                       history=[{"epoch": 1, "valid_ppl": ppl}])


# A front whose bend is clearly at 10k parameters: big gains before it, little after.
FRONT = [rec(0, 1_000, 200.0), rec(1, 10_000, 40.0), rec(2, 100_000, 35.0), rec(3, 1_000_000, 33.0)]
OTHERS = [rec(4, 50_000, 300.0), rec(5, 2_000, 10.0, status="pruned"), rec(6, 500, float("nan"), status="failed")]


def test_knee_is_the_bend_of_the_front():
    assert knee_point(FRONT).number == 1
    assert knee_point(list(reversed(FRONT))).number == 1


def test_knee_of_short_fronts_is_the_most_accurate_point():
    assert knee_point(FRONT[:1]).number == 0
    assert knee_point(FRONT[1:3]).number == 2
    with pytest.raises(ValueError, match="empty"):
        knee_point([])


def test_pick_rules_use_only_finished_front_trials():
    records = FRONT + OTHERS
    assert pick(records).number == 1  # knee by default
    assert pick(records, knee=True).number == 1
    assert pick(records, max_params=50_000).number == 1
    assert pick(records, max_params=100_000).number == 2
    assert pick(records, max_ppl=36.0).number == 2
    assert pick(records, max_ppl=500.0).number == 0
    # the pruned trial's half-trained perplexity of 10 must never be chosen
    assert pick(records, max_params=2_500).number == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"max_params": 10}, "at most 10 parameters"),
    ({"max_ppl": 1.0}, "reaches perplexity"),
    ({"max_params": 0}, "max_params"),
    ({"max_ppl": -1.0}, "max_ppl"),
    ({"max_params": 10, "knee": True}, "one rule"),
])
def test_pick_errors_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pick(FRONT, **kwargs)


def test_pick_without_finished_trials_fails():
    with pytest.raises(ValueError, match="no finished trial"):
        pick(OTHERS[1:])


def test_exported_yaml_loads_as_the_trial_config(tmp_path):
    from squeezelstm.trainers import Config, load_config

    out = tmp_path / "best.yaml"
    summary = export_trial(FRONT[1], out, experiment="exp")
    text = out.read_text()
    assert text.startswith("# squeezelstm export: experiment exp trial 1")
    assert "valid ppl 40.0000" in text and "params 10,000" in text
    assert load_config(out) == Config.from_dict(CONFIG)
    metrics = json.loads((tmp_path / "best.yaml.metrics.json").read_text())
    assert metrics["trial"] == 1 and metrics["valid_ppl"] == 40.0 and summary["test_ppl"] == 41.0


def test_export_rejects_bad_output_paths(tmp_path):
    with pytest.raises(ValueError, match="must end in"):
        export_trial(FRONT[0], tmp_path / "best.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_trial(FRONT[0], tmp_path / "missing" / "best.yaml")


def test_records_round_trip_through_the_local_file(tmp_path):
    paths = resolve_paths("exp", tmp_path)
    paths.experiment_dir.mkdir(parents=True)
    write_records(paths.records_file, FRONT + OTHERS, {"trials": 7})
    meta, records = load_records("exp", storage=tmp_path)
    assert meta == {"trials": 7}
    assert [r.number for r in records] == list(range(7))
    assert records[1] == FRONT[1]
    assert records[6].valid_ppl is None  # NaN is stored as null, still a failed trial


def test_export_command_writes_config_and_prints_json(tmp_path, capsys):
    paths = resolve_paths("exp", tmp_path / "runs")
    paths.experiment_dir.mkdir(parents=True)
    write_records(paths.records_file, FRONT + OTHERS, {"trials_dir": str(paths.trials_dir)})
    out = tmp_path / "small.yaml"
    code = main(["export", "--experiment", "exp", "--storage", str(tmp_path / "runs"), "--max-params", "5000",
                 "--out", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["trial"] == 0 and printed["params"] == 1_000
    assert out.read_text().startswith("# squeezelstm export: experiment exp trial 0")


def test_export_command_errors_are_one_line(tmp_path, capsys):
    code = main(["export", "--experiment", "nope", "--storage", str(tmp_path), "--knee", "--out",
                 str(tmp_path / "b.yaml"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("squeezelstm: error:") and "\n" not in err
    paths = resolve_paths("exp", tmp_path)
    paths.experiment_dir.mkdir(parents=True)
    write_records(paths.records_file, FRONT, {})
    code = main(["export", "--experiment", "exp", "--storage", str(tmp_path), "--max-ppl", "1",
                 "--out", str(tmp_path / "b.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "reaches perplexity 1.0" in err and "\n" not in err
