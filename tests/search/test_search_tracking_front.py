"""A finished trial costs the tracker a few MLflow calls whatever the search's size: the front's tags change by
diffs, the hypervolume is the next step of a history kept in memory, nothing is listed or read back.

The MLflow client is a real one over a SQLite store in a temp dir, wrapped in a spy that counts its calls.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from squeezelstm.dashboards import write_front_files
from squeezelstm.search.pareto import TrialRecord, log_hypervolume, pareto_front
from squeezelstm.search.tracking import PARENT_TAG, PARETO_TAG, TRIAL_TAG, SearchTracker, hypervolume_history

REF = {"ref_params": 1e7, "ref_ppl": 1000.0}
READS = ("search_runs", "get_metric_history", "get_run", "list_artifacts")


class Spy:
    """The real client, with every method call counted by name."""

    def __init__(self, client) -> None:
        self.client, self.calls = client, Counter()

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the schema, once
    return uri


def record(number: int, params: int, ppl: float | None, status: str = "finished") -> TrialRecord:
    return TrialRecord(number=number, family="lstm", params=params, status=status, valid_ppl=ppl,
                       config={"model": {"cell": "lstm", "hidden_size": 8}}, history=[{"epoch": 1, "valid_ppl": ppl}],
                       started_at=time.time(), ended_at=time.time() + number)


def spied(store: str, name: str, **kwargs) -> tuple[SearchTracker, Spy]:
    tracker = SearchTracker(store, name, **kwargs)
    spy = Spy(tracker.client)
    tracker._client = spy
    return tracker, spy


def tagged(tracker: SearchTracker) -> set[int]:
    runs = tracker.client.client.search_runs([tracker.experiment_id], f"tags.`{PARENT_TAG}` = '{tracker.parent_run_id}'")
    return {int(r.data.tags[TRIAL_TAG]) for r in runs if r.data.tags.get(PARETO_TAG) == "true"}


# (params, ppl): 2 never on the front, 4 pruned, 5 takes 0, 1 and 3 off the front at once
SEQUENCE = [(1000, 100.0), (2000, 60.0), (3000, 70.0), (1500, 90.0), (800, 300.0, "pruned"), (900, 50.0),
            (4000, 40.0)]


def test_a_completion_touches_only_the_runs_whose_membership_changed(store):
    tracker, spy = spied(store, "diffs")
    tracker.start_search(params={"seed": 0}, tags={})
    records: list[TrialRecord] = []
    front: set[int] = set()
    for number, (params, ppl, *status) in enumerate(SEQUENCE):
        r = record(number, params, ppl, *status)
        records.append(r)
        tracker.end_trial(r)
        spy.calls.clear()
        tracker.update_front(lambda: records, **REF, report=False)
        new = {f.number for f in pareto_front(records)}
        calls = dict(spy.calls)
        assert calls.get("set_tag", 0) == len(new - front), (number, calls)
        assert calls.get("delete_tag", 0) == len(front - new), (number, calls)
        # nothing listed or read back; one batch for the step and the description; the reference once
        assert not {k for k in calls if k in ("search_runs", "get_metric_history", "log_artifact")}, (number, calls)
        assert calls.get("log_batch", 0) <= (2 if number == 0 else 1), (number, calls)
        assert tagged(tracker) == new
        front = new
    assert front == {5, 6}  # trial 5 took 0, 1 and 3 off the front in one completion
    hv = [h for h in hypervolume_history(spy.client, tracker.parent_run_id)]
    assert [h["finished"] for h in hv] == [1, 2, 3, 4, 5, 6]  # a step per finished trial, not for the pruned one
    assert hv[-1]["hypervolume"] == log_hypervolume(records, **REF)
    assert hv == tracker._front.history  # what the report draws is what a reader gets back


def test_the_front_files_at_most_every_so_often_and_at_the_end(store):
    tracker, spy = spied(store, "files", front_files=write_front_files, report_every_s=3600)
    tracker.start_search(params={"seed": 0}, tags={})
    records: list[TrialRecord] = []
    asked = []
    for number, (params, ppl, *status) in enumerate(SEQUENCE):
        records.append(record(number, params, ppl, *status))
        tracker.end_trial(records[-1])
        tracker.update_front(lambda: asked.append(1) or list(records), **REF)
    assert spy.calls["log_artifact"] == 3 and len(asked) == 1  # the first call's CSV, JSON and report only
    tracker.end_search()
    assert spy.calls["log_artifact"] == 6 and len(asked) == 2  # and the last state's, at the end
    import json
    from pathlib import Path

    rows = json.loads(Path(spy.client.download_artifacts(tracker.parent_run_id, "pareto_front.json")).read_text())
    assert [row["trial"] for row in rows] == [5, 6]


def test_resume_reads_the_store_once_then_diffs(store):
    first, _ = spied(store, "resumed")
    first.start_search(params={"seed": 0}, tags={})
    records = [record(n, p, v, *s) for n, (p, v, *s) in enumerate(SEQUENCE[:4])]
    for r in records:
        first.end_trial(r)
        first.update_front(records[: r.number + 1], **REF, report=False)
    assert tagged(first) == {0, 1, 3}

    second, spy = spied(store, "resumed")
    second.start_search(params={"seed": 0}, tags={}, resume=True)
    late = record(4, 900, 50.0)  # dominates the whole front
    records.append(late)
    second.end_trial(late)
    spy.calls.clear()
    second.update_front(records, **REF, report=False)
    assert spy.calls["search_runs"] == 1 and spy.calls["get_metric_history"] == 1  # the store read once
    assert tagged(second) == {4}
    spy.calls.clear()
    again = record(5, 5000, 45.0)
    records.append(again)
    second.end_trial(again)
    spy.calls.clear()
    second.update_front(records, **REF, report=False)  # a list is scanned for unseen trials: no listing
    assert {k: v for k, v in spy.calls.items() if k in READS} == {}
    assert spy.calls["set_tag"] == 1 and spy.calls["delete_tag"] == 0 and tagged(second) == {4, 5}
    steps = [h["finished"] for h in hypervolume_history(spy.client, second.parent_run_id)]
    assert steps == [1, 2, 3, 4, 5, 6]
