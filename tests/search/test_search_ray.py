"""The Ray Tune adapter: searcher/scheduler bookkeeping (fast, with a fake controller) and one real search.

The slow part runs one tiny search on the synthetic corpus through Ray (shared by its tests):
pruned trials must reach the Optuna study as PRUNED, the front holds finished trials only, MLflow
agrees with the controller, and an exported trial trains again to the same perplexity.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
from dataclasses import dataclass, field

from pathlib import Path

import pytest

from squeezelstm.search.backends import (
    ControllerScheduler,
    ControllerSearcher,
    SearchSession,
    register_session,
    release_session,
)
from squeezelstm.search.pareto import STATUSES, TrialRecord, pareto_front


@dataclass(frozen=True)
class Spec:
    number: int
    family: str = "lstm"
    config: dict = field(default_factory=dict)
    sampled: dict = field(default_factory=dict)
    params: int = 100
    flops: int = 10


class FakeController:
    """Records what the adapter tells it; prunes the trial numbers in ``prune``."""

    def __init__(self, prune=()):
        self.prune = set(prune)
        self.recs: dict[int, TrialRecord] = {}
        self.reports: list[tuple] = []
        self.completed: list[tuple] = []

    def suggest(self):
        n = len(self.recs)
        self.recs[n] = TrialRecord(number=n, family="lstm", params=100 + n)
        return Spec(n, params=100 + n)

    def report(self, number, epoch, metrics):
        self.reports.append((number, epoch, metrics))
        return number in self.prune

    def complete(self, number, status, result=None):
        self.completed.append((number, status, result))
        rec = self.recs[number]
        rec.status = "pruned" if number in self.prune else status
        return rec

    def records(self):
        return [self.recs[k] for k in sorted(self.recs)]

    records_view = records

    def record(self, number):
        return self.recs[number]

    def n_records(self):
        return len(self.recs)

    def counts(self):
        return {s: sum(r.status == s for r in self.recs.values()) for s in STATUSES}

    def front(self):
        return pareto_front(self.records())


@pytest.fixture
def session():
    events = []
    s = SearchSession(controller=FakeController(prune={1}), trials=3, trials_dir="/nonexistent",
                      progress=events.append)
    token = register_session(s)
    yield s, token, events
    release_session(token)


class FakeTrial:
    def __init__(self, number):
        self.config = {"number": number}


def test_searcher_suggests_until_requested_trials_exist(session):
    s, token, events = session
    searcher = ControllerSearcher(token)
    configs = [searcher.suggest(f"id{i}") for i in range(3)]
    assert [c["number"] for c in configs] == [0, 1, 2]
    assert configs[0]["spec"]["params"] == 100 and configs[0]["trials_dir"] == "/nonexistent"
    assert searcher.suggest("id3") == ControllerSearcher.FINISHED
    assert [e.kind for e in events] == ["started"] * 3


def test_searcher_reissues_unfinished_trials_first(session):
    s, token, _ = session
    s.controller.suggest()  # trial 0, started in an earlier (killed) session
    s.reissue = [Spec(0)]
    searcher = ControllerSearcher(token)
    assert searcher.suggest("a")["number"] == 0
    assert searcher.suggest("b")["number"] == 1
    assert searcher.suggest("c")["number"] == 2
    assert searcher.suggest("d") == ControllerSearcher.FINISHED


def test_completion_statuses_reach_the_controller(session):
    s, token, events = session
    searcher = ControllerSearcher(token)
    for i in range(3):
        searcher.suggest(f"id{i}")
    final = {"final": True, "trial_status": "finished", "valid_ppl": 12.5, "test_ppl": 13.0, "config": {}}
    searcher.on_trial_complete("id0", final)
    searcher.on_trial_complete("id1", {"epoch": 1, "metrics": {"valid_ppl": 40.0}})  # stopped by the scheduler
    searcher.on_trial_complete("id2", None, error=True)
    got = {n: (status, result) for n, status, result in s.controller.completed}
    assert got[0] == ("finished", {"valid_ppl": 12.5, "test_ppl": 13.0})
    assert got[1] == ("pruned", None)
    assert got[2] == ("failed", None)
    assert [e.kind for e in events[3:]] == ["finished", "pruned", "failed"]
    assert "3 running" not in events[-1].line() and "0 running" in events[-1].line()


def test_a_controller_error_ends_the_search_and_is_kept(session):
    s, token, _ = session

    def no_room():
        raise ValueError("no configuration within budget")

    s.controller.suggest = no_room
    assert ControllerSearcher(token).suggest("x") == ControllerSearcher.FINISHED
    assert "within budget" in str(s.error)


def test_diverged_final_result_is_told_as_diverged(session):
    s, token, _ = session
    searcher = ControllerSearcher(token)
    searcher.suggest("x")
    searcher.on_trial_complete("x", {"final": True, "trial_status": "diverged", "valid_ppl": None})
    assert s.controller.completed[0][1] == "diverged"


def test_scheduler_stops_what_the_controller_prunes(session):
    s, token, _ = session
    scheduler = ControllerScheduler(token)
    keep = scheduler.on_trial_result(None, FakeTrial(0), {"epoch": 1, "metrics": {"valid_ppl": 30.0}})
    # Ray hands schedulers flattened results.
    stop = scheduler.on_trial_result(None, FakeTrial(1), {"epoch": 1, "metrics/valid_ppl": 50.0})
    final = scheduler.on_trial_result(None, FakeTrial(1), {"final": True, "trial_status": "finished"})
    assert (keep, stop, final) == ("CONTINUE", "STOP", "CONTINUE")
    assert s.controller.reports == [(0, 1, {"valid_ppl": 30.0}), (1, 1, {"valid_ppl": 50.0})]


def test_searcher_and_scheduler_pickle_without_the_controller(session, tmp_path):
    s, token, _ = session
    searcher = ControllerSearcher(token)
    searcher.suggest("abc")
    clone = pickle.loads(pickle.dumps(searcher))
    assert clone._numbers == {"abc": 0} and "controller" not in pickle.dumps(searcher).decode("latin1")
    searcher.save(str(tmp_path / "s.json"))
    fresh = ControllerSearcher(token)
    fresh.restore(str(tmp_path / "s.json"))
    assert fresh._numbers == {"abc": 0}
    assert pickle.loads(pickle.dumps(ControllerScheduler(token)))._token == token


def test_searcher_defers_while_a_proposal_is_computed_so_results_are_handled(tmp_path):
    """A slow ehvi proposal never holds Ray's event loop: ``suggest`` hands out nothing (Ray asks again) while
    it is computed, results and completions are handled meanwhile, and the proposal saw every running trial."""
    import threading
    import time

    from squeezelstm.search.backends._event_log import DriverEventLog
    from squeezelstm.search.config import SearchConfig
    from squeezelstm.search.controller import SearchController
    from squeezelstm.search.space import parse_space

    raw = {"name": "toy", "data": {"corpus": "synthetic", "vocab_size": 200},
           "model": {"cell": {"choice": ["lstm", "grouped"]}, "hidden_size": {"int": [8, 96], "step": 8},
                     "embedding_size": 16},
           "train": {"lr": {"float": [1e-3, 1e-2], "log": True}, "epochs": 3},
           "families": {"grouped": {"groups": {"choice": [2, 4]}}}, "budget": {"max_params": 40_000}}
    config = SearchConfig(parse_space(raw), sampler="ehvi", pruner="none", seed=1,
                          sampler_options={"n_startup": 2, "pool_size": 24})
    controller = SearchController(config, vocab_size=200, prefetch=True)
    events = DriverEventLog(tmp_path / "events.jsonl")
    s = SearchSession(controller=controller, trials=6, trials_dir=str(tmp_path), events=events)
    token = register_session(s)
    release, seen = threading.Event(), []
    try:
        searcher, scheduler = ControllerSearcher(token), ControllerScheduler(token)
        first = []
        for i in range(3):
            controller._prefetch.wait()
            first.append(searcher.suggest(f"id{i}"))
        assert [c["number"] for c in first] == [0, 1, 2]
        original = controller._ehvi.propose

        def gated(observations):  # a model fit that lasts until the test releases it
            seen.append({o.number for o in observations if o.status == "running"})
            assert release.wait(10)
            return original(observations)

        controller._prefetch.wait()
        controller._prefetch._propose = gated
        assert searcher.suggest("id3")["number"] == 3  # the prepared proposal; the gated one starts
        assert not controller.proposal_ready()
        start = time.perf_counter()
        assert searcher.suggest("id4") is None  # not ready: nothing handed out, the loop goes on
        assert scheduler.on_trial_result(None, FakeTrial(0), {"epoch": 1, "metrics": {"valid_ppl": 80.0},
                                                              "reported_at": time.time()}) == "CONTINUE"
        searcher.on_trial_complete("id1", {"final": True, "trial_status": "finished", "valid_ppl": 60.0,
                                           "reported_at": time.time()})
        # none of it waited for the gated proposal (which holds out for 10 s); generous for a loaded machine
        assert time.perf_counter() - start < 5 and not controller.proposal_ready()
        release.set()
        controller._prefetch.wait()
        assert searcher.suggest("id4")["number"] == 4
        assert seen[0] == {0, 1, 2, 3}  # the kriging believer kept the running trials apart
        for trial_id in ("id0", "id2", "id3", "id4"):  # with nothing running, suggest waits for the proposal
            searcher.on_trial_complete(trial_id, {"final": True, "trial_status": "finished", "valid_ppl": 70.0})
        controller._prefetch.wait()
        release.clear()
        threading.Timer(0.2, release.set).start()
        controller._prefetch._result = None
        controller._prefetch.refill(controller._observations())
        assert searcher.suggest("id5")["number"] == 5
    finally:
        release.set()
        release_session(token)
        events.close()
    logged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in logged].count("suggest") == 7
    assert sum(e.get("deferred", False) for e in logged) == 1
    result = next(e for e in logged if e["event"] == "result")
    assert result["proposing"] is True and 0 <= result["wait_s"] < 5 and result["handle_s"] >= 0


# ---------------------------------------------------------------------------------------------
# One real search through Ray (slow).

TINY_SPACE = (Path(__file__).parents[1] / "data" / "tiny_ray.yaml").read_text()  # a tiny space for fast Ray searches


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    ray = pytest.importorskip("ray")
    from squeezelstm.dashboards import write_front_files
    from squeezelstm.search.backends import run_search
    from squeezelstm.search.config import SearchConfig

    root = tmp_path_factory.mktemp("ray_search")
    space = root / "tiny.yaml"
    space.write_text(TINY_SPACE)
    events = []
    ours = not ray.is_initialized()
    if ours:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # One trial at a time and a pruner that stops every trial worse than the best finished one
        # at the same epoch: with a fixed seed some trial is pruned, and the order is reproducible.
        config = SearchConfig(
            space, trials=4, experiment="tiny", sampler="random", pruner="percentile", seed=3,
            pruner_options={"percentile": 0.0, "n_startup_trials": 1, "n_warmup_steps": 0},
            max_concurrent=1, storage=root / "runs", tracking_uri=f"sqlite:///{root}/mlflow.db",
        )
        result = run_search(config, progress=events.append, front_files=write_front_files)
    finally:
        if ours:
            ray.shutdown()
    return result, events, root


@pytest.mark.slow
def test_search_runs_requested_trials_through_ray(search):
    result, events, _ = search
    assert len(result.records) == 4
    assert all(r.status in ("finished", "pruned") for r in result.records)
    assert [e.kind for e in events].count("started") == 4
    assert result.front and all(r.status == "finished" for r in result.front)
    for r in result.records:
        assert all("valid_ppl" in h and "train_ppl" in h for h in r.history)
        if r.status == "finished":
            assert r.epochs == 2 and math.isfinite(r.valid_ppl) and r.test_ppl is not None
            assert r.history[-1]["valid_ppl"] == pytest.approx(r.valid_ppl)
    assert result.paths.records_file.is_file()


@pytest.mark.slow
def test_pruned_trials_reach_the_sampler_as_pruned(search):
    import optuna

    result, _, _ = search
    pruned = [r for r in result.records if r.status == "pruned"]
    assert pruned, "the percentile-0 pruner stopped no trial: expected at least one pruned trial"
    for r in pruned:
        assert r.epochs == 1 and r.test_ppl is None
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(result.paths.state_dir / "optuna.journal")))
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = {t.number: t for t in study.get_trials()}
    for r in result.records:
        trial = states[r.number]
        if r.status == "pruned":
            assert trial.state == optuna.trial.TrialState.PRUNED and trial.values is None
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert trial.values == [float(r.params), pytest.approx(r.valid_ppl)]
    assert {r.number for r in result.front} <= {r.number for r in result.records if r.status == "finished"}


@pytest.mark.slow
def test_mlflow_store_agrees_with_the_controller(search):
    result, _, root = search
    tracking_read = pytest.importorskip("squeezelstm.search.tracking")
    _, records = tracking_read.load_search(f"sqlite:///{root}/mlflow.db", "tiny")
    got = {r.number: r.status for r in records}
    assert got == {r.number: r.status for r in result.records}


@pytest.mark.slow
def test_export_then_train_reproduces_the_trial(search, tmp_path):
    from squeezelstm.search.cli import main
    from squeezelstm.trainers import load_config, train

    result, _, root = search
    out = tmp_path / "best.yaml"
    code = main(["export", "--experiment", "tiny", "--storage", str(root / "runs"), "--knee", "--out", str(out),
                 "--checkpoint"])
    assert code == 0
    header = out.read_text().splitlines()[0]
    number = int(header.split("trial ")[1].split()[0])
    record = next(r for r in result.records if r.number == number)
    assert record in result.front
    assert (tmp_path / "best_checkpoint").is_dir()
    config = load_config(out)
    again = train(config)
    assert again.status == "finished"
    assert again.valid_ppl == pytest.approx(record.valid_ppl, rel=1e-4)
    assert again.test_ppl == pytest.approx(record.test_ppl, rel=1e-4)


class SlowTracker:
    """A tracker whose completion work takes ``delay`` seconds (MLflow round trips), or fails from trial ``fail_at``."""

    def __init__(self, delay=0.0, fail_at=None):
        self.delay, self.fail_at = delay, fail_at
        self.ended: list[int] = []
        self.fronts = 0
        self.threads: set[str] = set()

    def end_trial(self, record):
        import threading
        import time

        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail_at is not None and record.number >= self.fail_at:
            raise ConnectionError(f"tracking server gone at trial {record.number}")
        self.ended.append(record.number)

    def update_front(self, records, **kwargs):
        self.fronts += 1

    def trial_logger(self, number):
        return None


@contextlib.contextmanager
def tracked_searcher(tracker, **session):
    """A registered session with ``tracker`` and four suggested trials: (session, searcher, a final result)."""
    s = SearchSession(controller=FakeController(), trials=4, trials_dir="/nonexistent", tracker=tracker, **session)
    token = register_session(s)
    try:
        searcher = ControllerSearcher(token)
        for i in range(4):
            searcher.suggest(f"id{i}")
        yield s, searcher, {"final": True, "trial_status": "finished", "valid_ppl": 12.5, "config": {}}
    finally:
        release_session(token)


def test_a_completions_tracking_runs_off_rays_loop_in_order():
    """Ending the child run and updating the front take their time on the tracking queue's thread, not on
    the loop thread that calls on_trial_complete (it returns at once), and run in the order trials closed."""
    import time

    tracker = SlowTracker(delay=0.2)
    with tracked_searcher(tracker, ref_params=1e6, ref_ppl=500.0) as (s, searcher, final):
        start = time.perf_counter()
        for i in (2, 0, 3, 1):
            searcher.on_trial_complete(f"id{i}", {**final, "number": i})
        assert time.perf_counter() - start < 0.2  # four completions' 0.8 s of tracking did not hold the loop
        assert s.track.pending() > 0
        s.track.drain()
        assert s.track.error is None, repr(s.track.error)
        assert tracker.ended == [2, 0, 3, 1] and tracker.fronts == 4 and s.track.done == 4
        assert tracker.threads == {"squeezelstm-tracking"}


def test_a_tracking_failure_off_the_loop_ends_the_search_at_the_next_completion():
    tracker = SlowTracker(fail_at=1)
    with tracked_searcher(tracker) as (s, searcher, final):
        searcher.on_trial_complete("id0", {**final, "number": 0})
        searcher.on_trial_complete("id1", {**final, "number": 1})
        s.track.drain()
        with pytest.raises(ConnectionError, match="gone at trial 1"):  # raised on the loop thread, as before
            searcher.on_trial_complete("id2", {**final, "number": 2})
        assert tracker.ended == [0]
        s.track.submit(lambda: tracker.ended.append(99))  # a stopped queue takes no more work
        s.track.drain()
        assert tracker.ended == [0] and s.track.pending() == 0
        with pytest.raises(ConnectionError):
            s.track.check()
