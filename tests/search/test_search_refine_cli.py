"""``squeezelstm refine``: bad input as one line (fast, before any Ray), and a real refinement of a tiny finished
search through Ray and MLflow (slow): ``refined.json``, the parent run with its nested children, ``pareto --refined``
with mean +- std, and ``--resume`` that runs only what has not ended and continues from the epoch checkpoints."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from squeezelstm.search.backends import SearchInterrupted, write_records
from squeezelstm.search.cli import main
from squeezelstm.search.cli._refine import _stopped_line, continue_command
from squeezelstm.search.pareto import TrialRecord

SYNTHETIC = {"data": {"corpus": "synthetic", "vocab_size": 30, "train_tokens": 3000, "valid_tokens": 600,
                      "test_tokens": 600},
             "model": {"cell": "lstm", "hidden_size": 16, "num_layers": 1, "embedding_size": 16},
             "train": {"epochs": 1, "batch_size": 10, "bptt": 10, "optimizer": "adam", "lr": 0.01, "device": "cpu"}}


def _search(tmp: Path, statuses=("finished",), config=SYNTHETIC) -> list[str]:
    """A finished search's records file (no training: the errors come before any) and the storage flags."""
    recs = [TrialRecord(number=i, family="lstm", params=1000 + i, status=s, valid_ppl=20.0 if s == "finished" else None,
                        config=config) for i, s in enumerate(statuses)]
    (tmp / "runs" / "exp").mkdir(parents=True)
    write_records(tmp / "runs" / "exp" / "records.json", recs, {"experiment": "exp"})
    return ["--storage", str(tmp / "runs")]


def _error(capsys, argv: list[str], match: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "Traceback" not in err, err
    assert err.startswith("squeezelstm: error: ") and match in err, err
    return err


def test_bad_input_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./mlflow.db here
    storage = _search(tmp_path)
    base = ["refine", "--experiment", "exp", *storage, "--no-tracking"]
    _error(capsys, ["refine", "--experiment", "nope", *storage], "no search named 'nope'")
    err = _error(capsys, base + ["--seeds", "1"], "--seeds must be an integer >= 2")
    assert "spread" in err  # says why
    _error(capsys, base + ["--top", "0"], "--top must be >= 1")
    _error(capsys, base + ["--epochs", "0"], "--epochs must be >= 1")
    _error(capsys, base + ["--set", "model.hidden_size=8"], "only train.* keys and data.path may change")
    _error(capsys, base + ["--set", "train.lr=-1"], "member 0 (lstm): train.lr must be")
    _error(capsys, base + ["--resume"], "nothing to resume")
    pruned = {**SYNTHETIC, "model": {**SYNTHETIC["model"], "cell": "hidden"},
              "train": {**SYNTHETIC["train"], "epochs": 3, "grow_epochs": [1], "prune_epochs": [2, 3],
                        "prune_sparsity": 0.5}}
    storage_h = _search(tmp_path / "h", config=pruned)
    _error(capsys, ["refine", "--experiment", "exp", *storage_h, "--no-tracking", "--epochs", "2"],
           "grows or prunes after epoch 3: --epochs must be at least 3")
    with pytest.raises(SystemExit) as exit_:
        main(base + ["--front", "--top", "2"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and "not allowed with argument" in err
    assert not (tmp_path / "runs" / "exp" / "refined.json").exists()


def test_resume_keeps_the_settings_it_started_with(tmp_path, capsys):
    from squeezelstm.search.backends import read_records, write_refinement
    from squeezelstm.search.pareto import new_refinement

    storage = _search(tmp_path)
    _, records = read_records(tmp_path / "runs" / "exp" / "records.json")
    write_refinement(tmp_path / "runs" / "exp" / "refined.json",
                     new_refinement("exp", records, seeds=3, epochs=2, overrides={"train.lr": 0.02}))
    base = ["refine", "--experiment", "exp", *storage, "--no-tracking", "--resume"]
    _error(capsys, base + ["--epochs", "5"], "was started with --epochs 2")
    _error(capsys, base + ["--top", "1"], "was started with --front")
    _error(capsys, base + ["--set", "train.lr=0.5"], "was started with --set train.lr=0.02")
    _error(capsys, base + ["--seeds", "2"], "--seeds 2 is fewer than the 3")
    _error(capsys, ["refine", "--experiment", "exp", *storage, "--no-tracking"], "is already refined")


def test_a_search_without_finished_trials_or_its_corpus_is_refused(tmp_path, capsys):
    storage = _search(tmp_path / "a", statuses=("pruned", "failed"))
    _error(capsys, ["refine", "--experiment", "exp", *storage, "--no-tracking"], "no finished trial")
    text = {**SYNTHETIC, "data": {"corpus": "text", "path": str(tmp_path / "gone")}}
    storage = _search(tmp_path / "b", config=text)
    _error(capsys, ["refine", "--experiment", "exp", *storage, "--no-tracking"], "data path of member 0 does not exist")


def test_an_unreachable_tracking_server_is_one_line(tmp_path, capsys):
    storage = _search(tmp_path)
    err = _error(capsys, ["refine", "--experiment", "exp", *storage, "--tracking-uri", "http://127.0.0.1:9"],
                 "127.0.0.1:9")
    assert not (tmp_path / "runs" / "exp" / "refined.json").exists(), err


def test_pareto_refined_reads_refined_json_where_the_store_has_no_refinement(tmp_path):
    import argparse

    from squeezelstm.search.backends import read_records, write_refinement
    from squeezelstm.search.cli._pareto import _refinement
    from squeezelstm.search.pareto import new_refinement

    args = argparse.Namespace(experiment="exp", storage=str(tmp_path / "runs"),
                              tracking_uri=f"sqlite:///{tmp_path}/none.db")
    _search(tmp_path)
    with pytest.raises(ValueError, match="has no refinement in the tracking store nor in .*refined.json: run squeezelstm refine"):
        _refinement(args)
    _, records = read_records(tmp_path / "runs" / "exp" / "records.json")
    write_refinement(tmp_path / "runs" / "exp" / "refined.json", new_refinement("exp", records, seeds=2))
    assert _refinement(args).to_dict() == new_refinement("exp", records, seeds=2).to_dict()
    assert not (tmp_path / "none.db").exists()  # looking did not create a store


def test_the_stop_line_names_the_signal_and_the_command_that_continues():
    exc = SearchInterrupted(signal.SIGTERM, counts={"finished": 3, "running": 1, "pending": 2})
    argv = ["refine", "--experiment", "my exp", "--seeds", "3"]
    line = _stopped_line(exc, "my exp", continue_command(argv, None))
    assert exc.exit_status == 143 and "\n" not in line and "interrupted by SIGTERM (stopped)" in line
    assert "3 of 6 runs finished; 1 running run(s) keep their last epoch checkpoint" in line
    assert line.endswith("continue with: squeezelstm refine --experiment 'my exp' --seeds 3 --resume")


def test_a_bare_ctrl_c_is_the_same_stop_line_and_130(tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt that met Python's default handler outside the runner's stops a refinement as a
    SIGINT does (the search and demo commands share the handling: ``_search.run_or_stop``)."""
    from squeezelstm.search.cli import _refine

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_refine, "run_refine", ctrl_c)
    assert main(["refine", "--experiment", "exp", *_search(tmp_path), "--no-tracking", "--seeds", "2"]) == 130
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "refine of 'exp' interrupted by SIGINT (stopped at once)" in err[0], err
    assert err[0].endswith(" --resume")


def test_the_ray_searcher_hands_out_each_pending_run_once_and_records_how_it_ended(tmp_path):
    pytest.importorskip("ray")
    from squeezelstm.search.backends import RefineSearcher, RefineSession, live_refine_session
    from squeezelstm.search.pareto import new_refinement

    recs = [TrialRecord(number=4, family="lstm", params=1000, recurrent_params=300, flops=2000, status="finished",
                        valid_ppl=20.0, config=SYNTHETIC)]
    ref = new_refinement("exp", recs, seeds=2, epochs=3, overrides={"train.lr": 0.02})
    ref.member(4).run(1).status = "finished"  # ended in an earlier session: not handed out again
    changes = []
    session = RefineSession(refinement=ref, checkpoints=str(tmp_path), threads=2, on_change=lambda: changes.append(1),
                            queue=[(m.number, r.seed) for m, r in ref.pending()])
    with live_refine_session(session) as token:
        searcher = RefineSearcher(token)
        config = searcher.suggest("a")
        assert searcher.suggest("b") == searcher.FINISHED
        assert config["dirname"] == "member_0004_seed_0" and config["trials_dir"] == str(tmp_path)
        spec = config["spec"]
        assert (spec["params"], spec["recurrent_params"], spec["flops"]) == (1000, 300, 2000)
        assert spec["config"]["train"] == {**SYNTHETIC["train"], "epochs": 3, "seed": 0, "lr": 0.02}
        assert ref.member(4).run(0).status == "running" and changes
        searcher.on_trial_complete("a", {"epoch": 2})  # Ray's shutdown at a stop: no final result
        assert ref.member(4).run(0).status == "running"
        history = [{"epoch": 1, "valid_ppl": 21.0, "elapsed_s": 1.5}, {"epoch": 2, "valid_ppl": 19.0, "elapsed_s": 3.0}]
        searcher.on_trial_complete("a", {"final": True, "trial_status": "finished", "valid_ppl": 19.0,
                                         "test_ppl": 19.5, "epochs": 2, "history": history})
        run = ref.member(4).run(0)
        assert (run.status, run.valid_ppl, run.test_ppl, run.epochs, run.elapsed_s) == ("finished", 19.0, 19.5, 2, 3.0)
        import pickle

        assert pickle.loads(pickle.dumps(searcher))._token == token  # Ray pickles it: the session stays behind


# -- a real refinement through Ray and MLflow --------------------------------------------------------------------

TINY_SPACE = (Path(__file__).parents[1] / "data" / "tiny_ray.yaml").read_text()


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    """A tiny real search (2 trials, 1 epoch), then ``refine --top 1 --seeds 2 --epochs 2`` and ``pareto --refined``
    through the command, on one local Ray."""
    ray = pytest.importorskip("ray")
    from squeezelstm.dashboards import write_front_files
    from squeezelstm.search.backends import run_search
    from squeezelstm.search.config import SearchConfig

    root = tmp_path_factory.mktemp("refine")
    (root / "tiny.yaml").write_text(TINY_SPACE)
    uri = f"sqlite:///{root}/mlflow.db"
    flags = ["--experiment", "tiny", "--storage", str(root / "runs"), "--tracking-uri", uri]
    ours = not ray.is_initialized()
    if ours:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = SearchConfig(root / "tiny.yaml", trials=2, epochs=1, experiment="tiny", sampler="random",
                              pruner="none", seed=1, max_concurrent=2, storage=root / "runs", tracking_uri=uri)
        search = run_search(config, front_files=write_front_files)
        code = main(["refine", *flags, "--top", "1", "--seeds", "2", "--epochs", "2", "--max-concurrent", "2",
                     "--json", "--quiet"])
        yield search, code, root, flags, uri
    finally:
        if ours:
            ray.shutdown()


@pytest.mark.slow
def test_refine_trains_each_member_with_each_seed(refined, capsys):
    search, code, root, _, _ = refined
    assert code == 0
    data = json.loads((root / "runs" / "tiny" / "refined.json").read_text())
    best = min((r for r in search.records if r.status == "finished"), key=lambda r: r.valid_ppl)
    assert data["selection"] == "top 1" and data["epochs"] == 2 and data["seeds"] == 2
    [member] = data["members"]
    assert member["number"] == best.number and member["on_front"]
    # the sizes are the search's, all three, exactly
    assert (member["params"], member["recurrent_params"], member["flops"]) == (best.params, best.recurrent_params,
                                                                               best.flops)
    runs = member["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and all(r["status"] == "finished" and r["epochs"] == 2 for r in runs)
    assert runs[0]["valid_ppl"] != runs[1]["valid_ppl"]  # two seeds, two models
    values = [r["valid_ppl"] for r in runs]
    assert member["valid"]["mean"] == pytest.approx(sum(values) / 2)
    assert member["valid"]["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    for seed in (0, 1):
        assert (root / "runs" / "tiny" / "refine" / f"member_{best.number:04d}_seed_{seed}").is_dir()
    assert (root / "runs" / "tiny" / "refined_report.html").is_file()


@pytest.mark.slow
def test_one_mlflow_parent_tagged_as_a_refinement_of_the_search_with_a_child_per_seed(refined):
    from mlflow import MlflowClient

    search, _, root, _, uri = refined
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    [search_parent] = [r for r in runs if r.data.tags.get("squeezelstm.role") == "search"]
    [parent] = [r for r in runs if r.data.tags.get("squeezelstm.role") == "refine"]
    assert parent.data.tags["squeezelstm.refines"] == search_parent.info.run_id
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["squeezelstm.seed"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" and r.data.tags["squeezelstm.status"] == "finished" for r in children)
    assert all(len(client.get_metric_history(r.info.run_id, "valid_ppl")) == 2 for r in children)
    note = parent.data.tags["mlflow.note.content"]  # the run's description in the UI: the refined table
    assert "Refinement of search `tiny`" in note and " ± " in note and "| 2/2 | * |" in note
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"refined.json", "refined_report.html"} <= artifacts


@pytest.mark.slow
def test_pareto_refined_prints_mean_plus_minus_std(refined, capsys, tmp_path):
    _, _, root, flags, uri = refined
    capsys.readouterr()
    assert main(["pareto", "--experiment", "tiny", "--tracking-uri", uri, "--refined", "--out",
                 str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    member = json.loads((root / "runs" / "tiny" / "refined.json").read_text())["members"][0]
    mean, std = member["valid"]["mean"], member["valid"]["std"]
    assert "refined: 1 members (top 1) x 2 seeds, 2 epochs" in out
    assert f"{mean:.2f} +- {std:.2f}" in out and "2/2" in out
    assert "error_y" in (tmp_path / "r.html").read_text()
    assert main(["pareto", "--experiment", "tiny", "--tracking-uri", uri, "--refined", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["refined"]
    assert got["front"] == [member["number"]] and got["members"][0]["valid_mean"] == pytest.approx(mean)
    assert got["members"][0]["valid_std"] == pytest.approx(std) and got["members"][0]["seeds"] == 2


@pytest.mark.slow
def test_resume_runs_only_what_has_not_ended_and_continues_from_the_checkpoint(refined, capsys):
    _, _, root, flags, _ = refined
    path = root / "runs" / "tiny" / "refined.json"
    assert main(["refine", *flags, "--quiet"]) == 2  # already refined: --resume it
    assert "pass --resume" in capsys.readouterr().err
    before = json.loads(path.read_text())
    runs = before["members"][0]["runs"]
    trained = [dict(h) for h in runs[0]["history"]]
    # seed 0 stands for a run a stopped driver left behind after its last epoch's checkpoint; seed 1 is done
    # (its numbers made up here: a run again would overwrite them)
    runs[0].update(status="running", valid_ppl=None, test_ppl=None, history=[], epochs=0)
    runs[1].update(valid_ppl=123.0, test_ppl=124.0)
    path.write_text(json.dumps(before))
    old = json.loads(path.read_text())
    assert main(["refine", *flags, "--resume", "--quiet"]) == 0
    after = json.loads(path.read_text())["members"][0]["runs"]
    assert after[1]["valid_ppl"] == 123.0 and after[1]["test_ppl"] == 124.0  # not run again
    assert after[0]["status"] == "finished" and after[0]["epochs"] == 2
    # continued from the checkpoint written after epoch 2: no epoch trained again (the same times and numbers)
    assert after[0]["history"] == trained and [h["epoch"] for h in trained] == [1, 2]
    assert old["members"][0]["runs"][1] == after[1]


# -- Ctrl-C on the real command ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_stops_a_refinement_with_130_and_prints_the_command_that_continues_it(tmp_path):
    import os
    import shlex
    import subprocess
    import sys
    import time

    from squeezelstm.trainers.checkpoint import checkpoint_path, load_checkpoint

    # epochs of about a second (the search interrupt test's corpus), one run at a time
    config = {**SYNTHETIC, "data": {**SYNTHETIC["data"], "train_tokens": 20000}, "train": {**SYNTHETIC["train"], "epochs": 3}}
    _search(tmp_path, config=config)
    script = Path(sys.executable).with_name("squeezelstm")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "squeezelstm.search.cli._main"]
    argv = ["refine", "--experiment", "exp", "--storage", str(tmp_path / "runs"), "--no-tracking", "--max-concurrent",
            "1", "--quiet"]
    path = tmp_path / "runs" / "exp" / "refined.json"
    proc = subprocess.Popen(head + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        ckpt = checkpoint_path(tmp_path / "runs" / "exp" / "refine" / "member_0000_seed_0")
        while time.time() < deadline and proc.poll() is None and not ckpt.exists():
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    [line] = [x for x in err.splitlines() if "interrupted by" in x]
    assert "refine of 'exp' interrupted by SIGINT" in line and out == ""
    runs = json.loads(path.read_text())["members"][0]["runs"]
    assert runs[0]["status"] in ("running", "finished") and runs[1]["status"] in ("pending", "running")
    assert load_checkpoint(ckpt)["history"]  # what --resume continues from (tested in-process above)
    assert shlex.split(line.split("continue with: ", 1)[1]) == ["squeezelstm", *argv, "--resume"]
