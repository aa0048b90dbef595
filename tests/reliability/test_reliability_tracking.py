"""A trial's MLflow logger when the store stops answering: training goes on, no epoch is lost or silently dropped.

MLflow's client already retries a server for about two minutes; past that, ``TrialLogger`` keeps
the epochs the store refused and sends them with the next epoch or at ``finish``. Here the store
(SQLite) is made to refuse by failing ``_log`` for a while, which is what a worker sees when its
requests to a dead server run out of retries.
"""

from __future__ import annotations

import pickle

import pytest

from squeezelstm.search.tracking import _tracker as tracking
from squeezelstm.search.tracking import SearchTracker


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module: creating MLflow's schema is the slow part."""
    return f"sqlite:///{tmp_path_factory.mktemp('outage') / 'mlflow.db'}"


@pytest.fixture
def logger(store, request):
    tracker = SearchTracker(store, f"outage-{request.node.name}")
    tracker.start_search(params={"seed": 0}, tags={})
    log = tracker.trial_logger(0)
    log.start({"model": {"cell": "lstm", "hidden_size": 16}}, 1234, 5678, {"model.hidden_size": 16})
    return tracker, log


class Outage:
    """Stands in for ``tracking._log`` while the server is down: every call fails."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/runs/log-batch")


def steps(tracker, run_id, key="valid_ppl"):
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, key))


def test_epochs_logged_during_an_outage_arrive_afterwards(logger, monkeypatch, capsys):
    tracker, log = logger
    log.log_epoch(1, {"epoch": 1, "valid_ppl": 30.0})
    real = tracking._log
    outage = Outage()
    monkeypatch.setattr(tracking, "_log", outage)
    log.log_epoch(2, {"epoch": 2, "valid_ppl": 25.0})   # must not raise: the trial keeps training
    log.log_epoch(3, {"epoch": 3, "valid_ppl": 22.0})
    assert outage.calls == 2
    assert "MLflow did not take epoch 2" in capsys.readouterr().err  # said, not silently dropped
    # a logger pickled to a Ray worker mid-outage keeps what it holds
    assert [e for e, _ in pickle.loads(pickle.dumps(log))._pending] == [2, 3]
    monkeypatch.setattr(tracking, "_log", real)          # the server is back
    log.log_epoch(4, {"epoch": 4, "valid_ppl": 21.0})
    log.finish("finished", {"valid_ppl": 21.0, "test_ppl": 21.5})
    assert steps(tracker, log.run_id) == [(1, 30.0), (2, 25.0), (3, 22.0), (4, 21.0)]
    run = tracker.client.get_run(log.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["final_valid_ppl"] == 21.0


def test_finish_with_the_store_still_down_fails_loudly(logger, monkeypatch):
    tracker, log = logger
    monkeypatch.setattr(tracking, "_log", Outage())
    log.log_epoch(1, {"epoch": 1, "valid_ppl": 30.0})
    with pytest.raises(ConnectionError):
        log.finish("finished", {"valid_ppl": 30.0})
    assert log._pending and log._pending[0][0] == 1    # still held, nothing dropped


def test_resume_ends_child_runs_the_killed_driver_left_running(store):
    """The driver died after the controller completed trial 0 but before MLflow heard of it."""
    from squeezelstm.search.pareto import TrialRecord

    tracker = SearchTracker(store, "stale")
    tracker.start_search(params={"seed": 0}, tags={})
    log = tracker.trial_logger(0)
    log.start({"model": {"cell": "lstm", "hidden_size": 16}}, 1234, 5678, {})
    log.log_epoch(1, {"valid_ppl": 30.0})
    done = TrialRecord(number=0, family="lstm", params=1234, flops=5678, status="finished", valid_ppl=30.0,
                       history=[{"epoch": 1, "valid_ppl": 30.0}])
    running = TrialRecord(number=1, family="lstm", params=1234, flops=5678, status="running")

    resumed = SearchTracker(store, "stale")
    resumed.start_search(params={"seed": 0}, tags={}, resume=True)
    assert resumed.parent_run_id == tracker.parent_run_id
    assert resumed.end_stale_trials([done, running]) == [0]
    run = resumed.client.get_run(log.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["squeezelstm.status"] == "finished"
    assert resumed.end_stale_trials([done, running]) == []  # idempotent


def test_a_resumed_trial_replaying_its_checkpoint_logs_no_epoch_twice(store):
    tracker = SearchTracker(store, "replay")
    tracker.start_search(params={"seed": 0}, tags={})
    first = tracker.trial_logger(0)
    first.start({"model": {"cell": "lstm", "hidden_size": 16}}, 1234, 5678, {})
    for epoch in (1, 2):
        first.log_epoch(epoch, {"valid_ppl": 40.0 - epoch, "train_ppl": 50.0 - epoch})
    # the driver dies; on resume the trainer replays epochs 1-2 from its checkpoint, then trains 3
    again = pickle.loads(pickle.dumps(tracker.trial_logger(0)))
    again.start({"model": {"cell": "lstm", "hidden_size": 16}}, 1234, 5678, {})
    for epoch in (1, 2, 3):
        again.log_epoch(epoch, {"valid_ppl": 40.0 - epoch, "train_ppl": 50.0 - epoch})
    again.finish("finished", {"valid_ppl": 37.0})
    assert again.run_id == first.run_id
    for key in ("valid_ppl", "train_ppl"):
        assert [s for s, _ in steps(tracker, first.run_id, key)] == [1, 2, 3]
