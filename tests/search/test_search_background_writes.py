"""The driver's periodic whole writes (the records snapshot, the records file, the front's files and HTML report)
run on one background thread (``trainers.files.BackgroundWriter``): a result does not wait for them, the newest
state wins, a failure is said at the next call, and the end of a search leaves the files as it ended."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from squeezelstm.dashboards import write_front_files
from squeezelstm.search.backends import RecordsFile
from squeezelstm.search.cli._main import UserError
from squeezelstm.search.cli._search import _tracking_outage_is_a_clean_stop
from squeezelstm.search.controller import LOG_FILE, SNAPSHOT_FILE, read_journal
from squeezelstm.search.controller import _journal
from squeezelstm.search.pareto import TrialRecord, pareto_front
from squeezelstm.search.tracking import SearchTracker
from squeezelstm.trainers.files import BackgroundWriter

from .test_search_journal import as_dicts, controller, drive

REF = {"ref_params": 1e7, "ref_ppl": 1000.0}
QUICK = 0.2  # seconds: what a call may take while a write it does not wait for blocks (the target is 0.1 s)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the schema, once
    return uri


def record(number: int, params: int, ppl: float) -> TrialRecord:
    return TrialRecord(number=number, family="lstm", params=params, status="finished", valid_ppl=ppl,
                       config={"model": {"cell": "lstm", "hidden_size": 8}}, history=[{"epoch": 1, "valid_ppl": ppl}],
                       started_at=time.time(), ended_at=time.time() + number)


def test_one_write_at_a_time_and_a_burst_coalesces_to_the_newest():
    writer, gate, ran = BackgroundWriter(), threading.Event(), []

    def slow(tag):
        gate.wait(10)
        ran.append(tag)

    writer.submit("k", lambda: slow("first"))
    deadline = time.time() + 5
    while not writer._running and time.time() < deadline:  # the first write has started and blocks
        time.sleep(0.01)
    start = time.perf_counter()
    for i in range(50):
        writer.submit("k", lambda i=i: ran.append(i))
    assert time.perf_counter() - start < QUICK and ran == []
    gate.set()
    writer.drain()
    assert ran == ["first", 49] and writer.writes == 2  # N requests while one ran: the running one and the newest
    # another key is not replaced by this one's writes, and drop forgets what is queued
    gate.clear()
    writer.submit("hold", lambda: slow("blocking"))
    writer.submit("k", lambda: ran.append("dropped"))
    writer.submit("other", lambda: ran.append("other"))
    assert writer.drain("k", drop=True) == 1  # the queued "k" write dropped; "hold" is not waited for
    gate.set()
    writer.drain()
    assert "dropped" not in ran and ran[-2:] == ["blocking", "other"]


def test_a_failed_write_is_kept_for_its_key_and_raised_once():
    writer = BackgroundWriter()
    writer.submit("bad", lambda: 1 / 0)
    writer.submit("good", lambda: None)
    writer.drain()
    writer.check("good")
    with pytest.raises(ZeroDivisionError):
        writer.check("bad")
    writer.check("bad")  # said once


def slow_files(gate: threading.Event, calls: list):
    def files(records, folder, **kwargs):
        calls.append(sorted(r.number for r in records))
        if len(calls) == 1:
            gate.wait(10)  # the first write hangs, like an HTML report of thousands of trials on a loaded box
        return write_front_files(records, folder, **kwargs)

    return files


def test_results_do_not_wait_for_the_front_files_and_the_end_shows_the_last_state(store):
    gate, calls = threading.Event(), []
    writer = BackgroundWriter()
    tracker = SearchTracker(store, "bg", slow_files(gate, calls), report_every_s=0.0,
                            writer=writer)
    tracker.start_search(params={"seed": 0}, tags={})
    records = []
    took = []
    for number, (params, ppl) in enumerate([(1000, 100.0), (2000, 60.0), (1500, 90.0), (900, 50.0), (4000, 40.0)]):
        records.append(record(number, params, ppl))
        start = time.perf_counter()
        tracker.end_trial(records[-1])
        tracker.update_front(lambda: list(records), **REF)
        took.append(time.perf_counter() - start)
    assert writer.busy() and calls[:1] == [[0]]  # the first write still hangs
    assert max(took[1:]) < QUICK * 5, took  # a completion's MLflow calls only (SQLite), never the hung write
    threading.Timer(0.3, gate.set).start()
    tracker.end_search()  # waits for the running write, drops the queued one, writes the last state itself
    assert calls[-1] == [0, 1, 2, 3, 4] and len(calls) <= 3
    rows = json.loads(Path(tracker.client.download_artifacts(tracker.parent_run_id, "pareto_front.json")).read_text())
    assert [row["trial"] for row in rows] == sorted(r.number for r in pareto_front(records))
    assert tracker.client.get_run(tracker.parent_run_id).info.status == "FINISHED"


def test_a_background_write_that_failed_is_the_one_line_tracking_error_at_the_end(store):
    from mlflow.exceptions import MlflowException

    writer = BackgroundWriter()

    def files(records, folder, **kwargs):
        raise MlflowException("API request to http://127.0.0.1:5000 failed\nwith exception ConnectionRefused")

    tracker = SearchTracker(store, "gone", files, report_every_s=3600, writer=writer)
    tracker.start_search(params={"seed": 0}, tags={})
    records = [record(0, 1000, 100.0)]
    tracker.end_trial(records[0])
    tracker.update_front(records, **REF)  # hands the write over and returns
    writer.drain()
    args = argparse.Namespace()
    with pytest.raises(UserError) as caught, _tracking_outage_is_a_clean_stop(args, "gone"):
        tracker.end_search("FINISHED")
    line = str(caught.value)
    assert "\n" not in line and "the tracking server failed during search 'gone' (MlflowException" in line
    assert "--resume" in line
    # the parent run is ended all the same (a resume reopens it)
    assert tracker.client.get_run(tracker.parent_run_id).info.status == "FINISHED"


def test_the_next_tracker_call_says_a_background_failure(store):
    writer = BackgroundWriter()
    failing = {"on": True}

    def files(records, folder, **kwargs):
        if failing["on"]:
            raise OSError("disk full")
        return write_front_files(records, folder, **kwargs)

    tracker = SearchTracker(store, "next", files, report_every_s=0.0, writer=writer)
    tracker.start_search(params={"seed": 0}, tags={})
    records = [record(0, 1000, 100.0)]
    tracker.end_trial(records[0])
    tracker.update_front(records, **REF)
    writer.drain()
    records.append(record(1, 900, 90.0))
    with pytest.raises(OSError, match="disk full"):
        tracker.end_trial(records[-1])


def test_the_journal_snapshot_in_the_background_and_resume_at_any_point(tmp_path, monkeypatch):
    gate, real = threading.Event(), _journal.atomic_write_text
    started = threading.Event()

    def slow_write(path, text):
        if Path(path).name == SNAPSHOT_FILE and threading.current_thread() is not threading.main_thread():
            started.set()
            gate.wait(10)
        real(path, text)

    monkeypatch.setattr(_journal, "atomic_write_text", slow_write)
    writer = BackgroundWriter()
    c = controller(tmp_path, every=0.0)  # a snapshot due at every event
    c._journal.writer = writer
    spec = c.suggest()  # the first event rotates the log and hands the snapshot over; it hangs
    assert started.wait(5)
    took = []
    for epoch in (1, 2, 3):
        start = time.perf_counter()
        c.report(spec.number, epoch, {"valid_ppl": 90.0 / epoch})
        took.append(time.perf_counter() - start)
    start = time.perf_counter()
    c.complete(spec.number, "finished", {"valid_ppl": 30.0, "test_ppl": 31.0})
    took.append(time.perf_counter() - start)
    assert max(took) < QUICK, took
    assert _journal.segments(tmp_path)  # closed logs the hung snapshot has not covered yet
    assert not (tmp_path / SNAPSHOT_FILE).exists()
    # a driver killed now: snapshot (none) + segments + log read back to the controller's state
    state = read_journal(tmp_path)
    assert as_dicts(state.records[n] for n in sorted(state.records)) == as_dicts(c.records())
    gate.set()
    drive(c, 4)
    c.flush()  # drains the writer, then writes the last state itself
    log = tmp_path / LOG_FILE
    assert not _journal.segments(tmp_path) and (not log.exists() or log.stat().st_size == 0)
    data = json.loads((tmp_path / SNAPSHOT_FILE).read_text())
    assert data["records"] == as_dicts(c.records()) and data["rejected"] == c.rejected
    assert as_dicts(controller(tmp_path).records()) == as_dicts(c.records())  # a resume


def test_segments_left_by_a_killed_driver_are_read_and_folded_on_resume(tmp_path):
    writer = BackgroundWriter()
    c = controller(tmp_path)
    c._journal.writer = writer
    drive(c, 3)
    c.flush()
    drive(c, 2)
    final = as_dicts(c.records())
    c._journal.close()
    # as if killed after a rotation, before its snapshot: the state lives in the segment (and the old snapshot)
    (tmp_path / LOG_FILE).replace(tmp_path / f"{LOG_FILE}.7")
    assert as_dicts(controller(tmp_path).records()) == final
    assert not _journal.segments(tmp_path)  # folded into a snapshot before anything new was appended


def test_snapshot_text_is_what_the_whole_rewrite_wrote(tmp_path):
    c = controller(tmp_path)
    drive(c, 4)
    state = c._state()
    assert state.to_json() == json.dumps(_journal.jsonable(state.to_dict()))


def test_records_view_copies_are_not_changed_by_later_events(tmp_path):
    c = controller(tmp_path)
    spec = c.suggest()
    c.report(spec.number, 1, {"valid_ppl": 80.0})
    [view] = c.records_view()
    before = view.to_dict()
    c.report(spec.number, 2, {"valid_ppl": 70.0})
    c.complete(spec.number, "finished", {"valid_ppl": 65.0})
    assert view.to_dict() == before and c.records()[0].status == "finished"


def test_records_file_in_the_background_and_whole_at_the_end(tmp_path):
    gate, writer = threading.Event(), BackgroundWriter()
    writer.submit("hold", lambda: gate.wait(10))  # the writer thread is busy: the records file's writes queue
    c = controller(tmp_path / "controller")
    records_file = RecordsFile(tmp_path / "records.json", {"experiment": "bg"}, every_s=0.0, writer=writer)
    for _ in range(3):
        drive(c, 1)
        start = time.perf_counter()
        assert records_file.maybe_write(c.records_view) is True
        assert time.perf_counter() - start < QUICK
    assert not (tmp_path / "records.json").exists()
    threading.Timer(0.2, gate.set).start()
    records_file.write(c.records())
    data = json.loads((tmp_path / "records.json").read_text())
    assert data == {"meta": {"experiment": "bg"}, "records": json.loads(json.dumps(as_dicts(c.records())))}
    writer.drain()
    assert json.loads((tmp_path / "records.json").read_text()) == data  # nothing older landed after it


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="POSIX signals")
def test_a_signal_handler_stops_a_drain_at_once():
    # the runner's clean-up drains the writer; a second Ctrl-C (its handler raises) must not wait for the write
    gate, writer = threading.Event(), BackgroundWriter()
    writer.submit("k", lambda: gate.wait(10))

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop

    old = signal.signal(signal.SIGUSR2, handler)
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR2)).start()
        start = time.perf_counter()
        with pytest.raises(Stop):
            writer.drain("k")
        assert time.perf_counter() - start < 2.0
    finally:
        signal.signal(signal.SIGUSR2, old)
        gate.set()
        writer.drain()
