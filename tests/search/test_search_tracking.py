"""SearchTracker / TrialLogger / load_search against real MLflow stores (SQLite in a temp dir; a server for one test).

Creating a SQLite store's schema takes seconds, so every SQLite test shares one module-scoped
database and uses its own experiment.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from squeezelstm.dashboards import write_front_files
from squeezelstm.search.cli import main as cli_main
from squeezelstm.search.config import SearchConfig
from squeezelstm.search.pareto import TrialRecord, log_hypervolume, pareto_front
from squeezelstm.search.tracking import (
    PARENT_TAG,
    PARETO_TAG,
    STATUS_TAG,
    TRIAL_TAG,
    SearchTracker,
    TrackingUnavailable,
)
from squeezelstm.search.tracking import load_search

REF = {"ref_params": 1e7, "ref_ppl": 1000.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the schema (the slow part) once, here
    return uri


def record(number: int, params: int, ppl: float | None, status: str = "finished", epochs: int = 3,
           family: str = "factorized") -> TrialRecord:
    history = [{"epoch": e, "valid_ppl": (ppl or 500.0) * (1 + 0.5 * (epochs - e)), "train_ppl": (ppl or 500.0),
                "tokens_per_s": 1000.0 + e, "lr": 0.01} for e in range(1, epochs + 1)]
    config = {"data": {"corpus": "synthetic", "vocab_size": 50},
              "model": {"cell": family, "hidden_size": 32, "num_layers": 1, "rank": 4},
              "train": {"epochs": epochs, "lr": 0.01, "seed": number}}
    return TrialRecord(number=number, family=family, params=params, flops=2 * params, status=status,
                       valid_ppl=ppl, test_ppl=None if ppl is None else ppl * 1.1, config=config,
                       sampled={"model.cell": family, "model.rank": 4}, history=history,
                       started_at=time.time(), ended_at=time.time())


def run_trial(tracker: SearchTracker, r: TrialRecord) -> None:
    """What the runner does: the worker (a pickled logger) logs, then the driver ends the trial."""
    logger = pickle.loads(pickle.dumps(tracker.trial_logger(r.number)))
    logger.start(r.config, r.params, r.flops, r.sampled)
    for h in r.history:
        logger.log_epoch(h["epoch"], h)
    logger.finish(r.status, {"valid_ppl": r.valid_ppl, "test_ppl": r.test_ppl, "history": r.history})
    tracker.end_trial(r)


def children(tracker: SearchTracker) -> list:
    return tracker.client.search_runs([tracker.experiment_id], f"tags.`{PARENT_TAG}` = '{tracker.parent_run_id}'")


def by_trial(runs) -> dict[int, list]:
    out: dict[int, list] = {}
    for run in runs:
        out.setdefault(int(run.data.tags[TRIAL_TAG]), []).append(run)
    return out


def test_run_structure_metrics_tags_and_artifacts(store):
    tracker = SearchTracker(store, "structure", write_front_files)
    tracker.check()
    parent = tracker.start_search(params={"space": "small.yaml", "sampler": "tpe", "pruner": "pareto",
                                          "budget": {"max_params": 100000}, "seed": 3},
                                  tags={"code_version": "abc123"}, config=SearchConfig("default", seed=3).to_dict())
    records = [record(0, 5000, 80.0), record(1, 9000, 60.0), record(2, 20000, 90.0, status="pruned", epochs=2),
               record(3, 3000, None, status="failed", epochs=0)]
    for r in records:
        run_trial(tracker, r)
    tracker.update_front(records, **REF, optimal_ppl=20.0)

    client = tracker.client
    prun = client.get_run(parent)
    assert prun.data.tags["squeezelstm.role"] == "search" and prun.data.tags["squeezelstm.search"] == "structure"
    assert prun.data.tags["code_version"] == "abc123" and prun.data.tags["squeezelstm.version"]
    assert prun.data.params["sampler"] == "tpe" and prun.data.params["budget.max_params"] == "100000"
    assert float(prun.data.params["hypervolume.ref_params"]) == 1e7
    parent_artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"pareto_front.csv", "pareto_front.json", "pareto_report.html", "search_config.json"} <= parent_artifacts
    stored = json.loads(Path(client.download_artifacts(parent, "search_config.json")).read_text())
    assert SearchConfig.from_dict(stored) == SearchConfig("default", seed=3)  # the parent run rebuilds the search
    front_json = json.loads(Path(client.download_artifacts(parent, "pareto_front.json")).read_text())
    assert [row["trial"] for row in front_json] == [0, 1]
    hv = client.get_metric_history(parent, "hypervolume")
    assert [m.step for m in hv] == [1, 2]
    assert hv[-1].value == pytest.approx(log_hypervolume(records, **REF))
    # the MLflow UI: opens on the runs table (model training, not GenAI traces); the front is the run's description
    assert client.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    note = prun.data.tags["mlflow.note.content"].splitlines()
    assert note[0] == (f"**Pareto front of search `structure`**: 2 trial(s), hypervolume "
                       f"{log_hypervolume(records, **REF):.4f}, smallest first (size objective: parameters).")
    assert note[2].startswith("| trial | family | params | recurrent | flops | valid ppl") and len(note) == 6
    assert note[4].startswith("| 0 | factorized | 5,000 | 0 | ") and "| 80.00 | 88.00 | rank=4 |" in note[4]
    assert note[5].startswith("| 1 | factorized | 9,000 | 0 | ") and "| 60.00 | 66.00 |" in note[5]

    runs = by_trial(children(tracker))
    assert sorted(runs) == [0, 1, 2, 3] and all(len(v) == 1 for v in runs.values())
    for r in records:
        run = client.get_run(runs[r.number][0].info.run_id)
        assert run.data.tags[PARENT_TAG] == parent
        assert run.data.tags[STATUS_TAG] == r.status
        assert run.data.params["model.cell"] == "factorized" and run.data.params["train.seed"] == str(r.number)
        assert run.info.status == ("FAILED" if r.status == "failed" else "FINISHED")
        (params_metric,) = client.get_metric_history(run.info.run_id, "params")
        assert (params_metric.value, params_metric.step) == (r.params, 0)
        assert client.get_metric_history(run.info.run_id, "flops")[0].value == 2 * r.params
        curve = client.get_metric_history(run.info.run_id, "valid_ppl")
        assert [(m.step, m.value) for m in curve] == [(h["epoch"], h["valid_ppl"]) for h in r.history]
        for key in ("train_ppl", "tokens_per_s", "lr"):
            assert len(client.get_metric_history(run.info.run_id, key)) == len(r.history)
        assert "config.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert (run.data.tags.get(PARETO_TAG) == "true") == (r.number in (0, 1))
    tracker.end_search()
    assert client.get_run(parent).info.status == "FINISHED"


def test_pareto_tags_follow_the_front_as_it_changes(store):
    tracker = SearchTracker(store, "retag")
    tracker.start_search(params={"seed": 0}, tags={})
    sequence = [record(0, 1000, 100.0), record(1, 2000, 50.0), record(2, 1500, 200.0),
                record(3, 800, 120.0, status="pruned"), record(4, 500, 40.0), record(5, 3000, 30.0)]
    done: list[TrialRecord] = []
    for r in sequence:
        run_trial(tracker, r)
        done.append(r)
        tracker.update_front(done, **REF, report=False)
        tagged = {n for n, runs in by_trial(children(tracker)).items()
                  if runs[0].data.tags.get(PARETO_TAG) == "true"}
        assert tagged == {f.number for f in pareto_front(done)}, f"after trial {r.number}"
    assert tagged == {4, 5}  # trial 4 dominated 0, 1 and 2; pruned 3 is never on the front
    hv = tracker.client.get_metric_history(tracker.parent_run_id, "hypervolume")
    assert [m.step for m in hv] == [1, 2, 3, 4, 5]  # one step per finished trial


def test_resume_continues_the_parent_without_duplicate_children(store):
    first = SearchTracker(store, "resume")
    parent = first.start_search(params={"seed": 1, "sampler": "tpe"}, tags={})
    done = [record(0, 1000, 100.0), record(1, 2000, 50.0)]
    for r in done:
        run_trial(first, r)
    first.update_front(done, **REF, report=False)
    # the driver dies while trial 2 runs: its child is left RUNNING
    first.trial_logger(2).start(record(2, 700, None).config, 700, 1400, {})

    second = SearchTracker(store, "resume")
    assert second.start_search(params={"seed": 1, "sampler": "random"}, tags={}, resume=True) == parent
    client = second.client
    assert client.get_run(parent).data.tags["resume.sampler"] == "random"  # params are immutable
    # trial 1 reported again (Ray retries on resume) and trial 2 re-run to the end
    run_trial(second, done[1])
    again = record(2, 700, 70.0)  # dominates trial 0, not trial 1
    run_trial(second, again)
    everything = done + [again]
    second.update_front(everything, **REF, report=False)
    second.update_front(everything, **REF, report=False)

    runs = by_trial(children(second))
    assert sorted(runs) == [0, 1, 2] and all(len(v) == 1 for v in runs.values())
    reused = client.get_run(runs[2][0].info.run_id)
    assert reused.info.status == "FINISHED" and reused.data.tags[STATUS_TAG] == "finished"
    assert len(client.get_metric_history(reused.info.run_id, "params")) == 1
    assert {n for n, r in runs.items() if r[0].data.tags.get(PARETO_TAG) == "true"} == {1, 2}
    assert [m.step for m in client.get_metric_history(parent, "hypervolume")] == [1, 2, 3]
    parents = client.search_runs([second.experiment_id], "tags.`squeezelstm.role` = 'search'")
    assert len(parents) == 1


def test_load_search_and_pareto_command_rebuild_from_the_store(store, tmp_path, capsys):
    tracker = SearchTracker(store, "rebuild")
    tracker.start_search(params={"seed": 2}, tags={})
    records = [record(0, 5000, 80.0), record(1, 9000, 60.0, family="grouped"),
               record(2, 4000, 95.0, status="pruned", epochs=1), record(3, 3000, None, status="diverged", epochs=2)]
    records[3].history[-1]["valid_ppl"] = math.inf  # MLflow stores it as float max; it must come back as inf
    for r in records:
        run_trial(tracker, r)
    tracker.update_front(records, **REF, optimal_ppl=20.0, report=False)

    info, loaded = load_search(store, "rebuild")
    assert info["run_id"] == tracker.parent_run_id
    assert (info["ref_params"], info["ref_ppl"], info["optimal_ppl"]) == (1e7, 1000.0, 20.0)
    assert [h["finished"] for h in info["hypervolume_history"]] == [1, 2]
    assert [r.number for r in loaded] == [0, 1, 2, 3]
    for got, want in zip(loaded, records):
        assert (got.family, got.params, got.flops, got.status) == (want.family, want.params, want.flops, want.status)
        assert got.config == want.config and got.sampled == want.sampled
        assert [h["epoch"] for h in got.history] == [h["epoch"] for h in want.history]
        assert [h["valid_ppl"] for h in got.history] == pytest.approx([h["valid_ppl"] for h in want.history])
        if want.valid_ppl is not None:
            assert got.valid_ppl == pytest.approx(want.valid_ppl) and got.test_ppl == pytest.approx(want.test_ppl)
    assert [r.number for r in pareto_front(loaded)] == [0, 1]
    assert loaded[3].history[-1]["valid_ppl"] == math.inf

    out = tmp_path / "report.html"
    assert cli_main(["pareto", "--experiment", "rebuild", "--tracking-uri", store, "--json", "--out", str(out)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [row["trial"] for row in payload["front"]] == [0, 1]
    assert payload["front"][1]["family"] == "grouped" and payload["front"][0]["key_args"]["rank"] == 4
    assert payload["hypervolume"] == pytest.approx(log_hypervolume(records, **REF))
    assert payload["statuses"] == {"finished": 2, "pruned": 1, "diverged": 1}
    assert out.stat().st_size > 100_000 and "plotly" in out.read_text()[:5_000_000]

    assert cli_main(["pareto", "--experiment", "rebuild", "--tracking-uri", store]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:3] == ["trial", "family", "key_args"] and len(table) == 4

    assert cli_main(["pareto", "--experiment", "no-such-search", "--tracking-uri", store]) == 2
    err = capsys.readouterr().err.strip()
    assert "no-such-search" in err and "\n" not in err
    missing = f"sqlite:///{tmp_path / 'nothing.db'}"
    assert cli_main(["pareto", "--experiment", "rebuild", "--tracking-uri", missing]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nothing.db").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_fast_one_line_error(capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=r"tracking server http://127\.0\.0\.1:\d+ is unreachable: ") as exc:
        SearchTracker(uri, "anything").check()
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, ConnectionError)
    assert "\n" not in str(exc.value) and time.monotonic() - start < 10
    assert cli_main(["pareto", "--experiment", "anything", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("squeezelstm: error: tracking server") and "\n" not in err
    with pytest.raises(ValueError, match="experiment"):
        SearchTracker(uri, "  ")


@pytest.mark.slow
def test_mlflow_server_takes_runs_and_artifacts_without_a_shared_disk(store, tmp_path):
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         # the module's store already has its schema: the server starts seconds sooner
         "--backend-store-uri", store,
         "--serve-artifacts", "--artifacts-destination", str(tmp_path / "served")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        # no background job runner: one process fewer to import, the server is up sooner
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        tracker = SearchTracker(uri, "served", write_front_files)
        tracker.check()
        tracker.start_search(params={"seed": 0}, tags={})
        records = [record(0, 5000, 80.0), record(1, 9000, 60.0), record(2, 4000, 99.0, status="pruned", epochs=1)]
        for r in records:
            run_trial(tracker, r)
        tracker.update_front(records, **REF)
        tracker.end_search()

        info, loaded = load_search(uri, "served")
        assert [(r.number, r.status) for r in loaded] == [(0, "finished"), (1, "finished"), (2, "pruned")]
        assert [r.number for r in pareto_front(loaded)] == [0, 1]
        client = tracker.client
        parent = client.get_run(info["run_id"])
        # artifacts went through the server's proxy, not a path the worker would need to share
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
        assert "pareto_report.html" in {a.path for a in client.list_artifacts(info["run_id"])}
        served = list((tmp_path / "served").rglob("config.json"))
        assert len(served) == 3
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_relative_sqlite_uris_are_made_absolute_for_the_trials_that_run_elsewhere(tmp_path, monkeypatch):
    from squeezelstm.search.tracking import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path.resolve() / 'runs' / 'm.db'}"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("m.db") == f"sqlite:///{tmp_path.resolve() / 'm.db'}"
    assert resolve_tracking_uri("http://127.0.0.1:5000/") == "http://127.0.0.1:5000"


def test_a_long_front_fits_the_run_description_and_says_what_it_left_out():
    """MLflow cuts a tag's value at 8,000 characters: a front of a few hundred trials keeps its smallest rows
    whole and ends with a line naming how many more there are, instead of a row cut in two."""
    from squeezelstm.search.tracking._ui import NOTE_MAX_CHARS, front_markdown

    front = [record(n, 1000 + 10 * n, 500.0 - n) for n in range(300)]
    text = front_markdown(front, "big", 1.5)
    assert len(text) <= NOTE_MAX_CHARS == 8000
    lines = text.splitlines()
    rows = [line for line in lines[4:] if line.startswith("| ")]
    assert 20 < len(rows) < 300 and all(line.endswith(" |") for line in rows)
    assert [int(line.split("|")[1]) for line in rows] == list(range(len(rows)))  # smallest first, none skipped
    assert lines[-1] == f"... and {300 - len(rows)} larger trial(s) on the front: all 300 are in `pareto_front.csv`."
    short = front_markdown(front[:3], "small")
    assert len(short.splitlines()) == 7 and "larger trial(s)" not in short  # a short front is left whole
