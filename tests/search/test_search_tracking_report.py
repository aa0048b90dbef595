"""The parent run's front files (CSV, JSON, HTML report) are written at most every ``report_every_s`` seconds;
``end_search`` writes the ones skipped last."""

from __future__ import annotations

import time

import pytest

from squeezelstm.dashboards import write_front_files
from squeezelstm.search.pareto import TrialRecord
from squeezelstm.search.tracking import SearchTracker

REF = {"ref_params": 1e7, "ref_ppl": 1000.0}


def record(number: int, params: int, ppl: float) -> TrialRecord:
    history = [{"epoch": e, "valid_ppl": ppl * (1 + 0.5 * (2 - e))} for e in (1, 2)]
    return TrialRecord(number=number, family="lstm", params=params, status="finished", valid_ppl=ppl,
                       config={"model": {"cell": "lstm", "hidden_size": 32}}, history=history,
                       started_at=time.time(), ended_at=time.time())


def tracker_with_calls(tmp_path, every: float) -> tuple[SearchTracker, list]:
    calls: list[tuple[int, bool]] = []

    def files(records, folder, **kwargs):
        calls.append((len(records), kwargs["report"]))
        return write_front_files(records, folder, **kwargs)

    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "throttled", files, report_every_s=every)
    tracker.start_search(params={"seed": 0}, tags={})
    return tracker, calls


def test_report_rebuilt_at_most_every_so_often_and_at_the_end(tmp_path):
    tracker, calls = tracker_with_calls(tmp_path, every=3600)
    records = [record(0, 5000, 80.0)]
    tracker.update_front(records, **REF)
    for n in (1, 2):
        records = records + [record(n, 5000 + 1000 * n, 80.0 - 5 * n)]
        tracker.update_front(records, **REF)  # no files within the hour (the tags and steps every time)
    assert calls == [(1, True)]
    tracker.end_search()
    assert calls == [(1, True), (3, True)]  # the files show the search as it ended
    artifacts = {a.path for a in tracker.client.list_artifacts(tracker.parent_run_id)}
    assert {"pareto_front.csv", "pareto_front.json", "pareto_report.html"} <= artifacts
    # every=0 rebuilds on every call, and end_search adds nothing when nothing was skipped
    tracker.report_every_s = 0.0
    tracker.update_front(records, **REF)
    tracker.update_front(records, **REF, report=False)  # an explicit skip is not a skipped rebuild
    n = len(calls)
    tracker.end_search()
    assert calls[-2:] == [(3, True), (3, False)] and len(calls) == n


def test_bad_report_interval():
    with pytest.raises(ValueError, match="report_every_s"):
        SearchTracker("sqlite:///x.db", "x", report_every_s=-1)
