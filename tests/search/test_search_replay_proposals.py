"""The replay with proposals that take simulated time (``replay_search(proposal_time=d)``), prepared in the
background as a Ray search prepares them: deterministic, the synchronous replay at d = 0, and a proposal
blind to the results that arrive while it is computed."""

from __future__ import annotations

import json

import pytest

from squeezelstm.search.backends import replay_search
from squeezelstm.search.config import SearchConfig
from squeezelstm.search.samplers import ExactSizeEHVI

from .test_search_replay import EPOCHS, VOCAB, _bench_module, _made_up_table, write_table_csv
from .test_search_replay_cli import TABLE, run

D = 1.5


@pytest.fixture(scope="module")
def made_up():
    return _made_up_table()


def _config(space, sampler="ehvi"):  # three random proposals, then the model: the prefetched ones matter early
    options = {"n_startup": 3} if sampler == "ehvi" else {}
    return SearchConfig(space, sampler=sampler, pruner="pareto", seed=1, epochs=EPOCHS, sampler_options=options)


def _replay(made_up, proposal_time, workers=3, sampler="ehvi", startup_trials=0):
    space, table = made_up
    return replay_search(table, _config(space, sampler), workers=workers, budget=60, vocab_size=VOCAB,
                         proposal_time=proposal_time, startup_trials=startup_trials)


def test_d0_is_the_synchronous_replay_and_d_is_deterministic(made_up):
    sync, d0 = _replay(made_up, None), _replay(made_up, 0.0)
    assert len(sync.trials) > 6
    assert d0.trials == sync.trials and d0.trace == sync.trace and d0.counts == sync.counts
    assert not any(e[0] == "refill" for e in sync.log)  # the synchronous replay prepares nothing in the background
    assert sum(e[0] == "refill" for e in d0.log) >= len(d0.trials) - 1
    a, b = _replay(made_up, D), _replay(made_up, D)
    assert a.trials == b.trials and a.trace == b.trace and a.log == b.log and a.trace_time == b.trace_time
    launches = [e for e in a.log if e[0] == "launch"]
    assert launches[0][1] == D and not launches[0][4]  # the first proposal is computed in suggest: it holds the driver
    assert all(at >= proposed + D for _, at, _, proposed, prepared in launches if prepared)
    assert sum(prepared for *_, prepared in launches) == len(launches) - 1
    assert a.trace_time == sorted(a.trace_time) and a.trace_time[-1] > sync.trace_time[-1]  # proposals take time
    assert a.time_to(a.trace[-1][1]) in a.trace_time and a.time_to(2.0) is None
    free = _replay(made_up, D, startup_trials=10**6)  # every proposal in the random start: none takes time
    assert free.trials == sync.trials and free.trace_time == sync.trace_time
    start = _replay(made_up, D, startup_trials=3)  # the first three proposals free, then each takes D
    launches = [e for e in start.log if e[0] == "launch"]
    assert [at for _, at, *_ in launches[:3]] == [0.0, 0.0, 0.0] and launches[-1][1] > 0


def test_a_prepared_proposal_misses_the_results_that_arrive_while_it_computes(made_up, monkeypatch):
    snapshots = []
    propose = ExactSizeEHVI.propose

    def spy(self, observations):
        snapshots.append({o.number: (o.status, len(o.curve)) for o in observations})
        return propose(self, observations)

    monkeypatch.setattr(ExactSizeEHVI, "propose", spy)
    res = _replay(made_up, D)
    assert res.counts["rejected"] == 0  # every proposal was one launch's (no retry)
    handled: dict = {}  # what the driver had handled so far, as the proposer sees it: status and epochs
    calls = iter(snapshots)
    missed = 0
    since_refill = None
    for kind, *rest in res.log:
        if kind == "launch":
            _, number, _, prepared = rest
            if not prepared:  # computed in suggest, from what was handled by then
                assert next(calls) == handled
            elif since_refill:
                missed += 1  # results came in while this proposal was computed: it did not see them (above)
            handled[number] = ("running", 0)
        elif kind == "refill":
            assert next(calls) == handled  # the snapshot at the refill, and nothing handled after it
            since_refill = 0
        elif kind == "report":
            number, epoch = rest[1:]
            handled[number] = ("running", epoch)
            since_refill = None if since_refill is None else since_refill + 1
        elif kind == "complete":
            number, status = rest[1:]
            handled[number] = (status, handled[number][1])
            since_refill = None if since_refill is None else since_refill + 1
    assert next(calls, None) is None
    assert missed >= 2


def test_a_sampler_without_prefetching_holds_the_driver_for_each_proposal(made_up):
    res = _replay(made_up, 1.0, workers=3, sampler="tpe")
    launches = [e for e in res.log if e[0] == "launch"]
    assert not any(e[0] == "refill" for e in res.log) and not any(prepared for *_, prepared in launches)
    assert [at for _, at, *_ in launches[:3]] == [1.0, 2.0, 3.0]
    held = [at - proposed for _, at, _, proposed, _ in launches]  # one proposal, and one more per over-budget retry
    assert all(h >= 1.0 and h == int(h) for h in held) and sum(held) == len(launches) + res.counts["rejected"]
    with pytest.raises(ValueError, match="proposal_time"):
        _replay(made_up, -0.5)


def test_the_command_reports_results_handled_while_a_proposal_computes(capsys):
    code, out, err = run(capsys, "--table", str(TABLE), "--trials", "16", "--workers", "8", "--seed", "2",
                         "--proposal-time", "0.5", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["proposal_time"] == 0.5 and data["trials"] == 16
    assert 0 <= data["results_during_proposal"] <= data["results"]
    for name in ("result_during_proposal", "result_no_proposal"):
        p50, p95, top = (data[f"{name}_latency_{k}_s"] for k in ("p50", "p95", "max"))
        assert p50 is None or 0 <= p50 <= p95 <= top < 60
    code, text, err = run(capsys, "--table", str(TABLE), "--trials", "6", "--workers", "2", "--proposal-time", "0")
    assert code == 0 and "while a proposal was computed" in text, err


def test_search_efficiency_takes_proposal_times(tmp_path, made_up, capsys):
    _, table = made_up
    path = write_table_csv(table.curves, tmp_path / "curves.csv.gz")
    out_json = tmp_path / "e.json"
    bench = _bench_module("search_efficiency")
    assert bench.main(["--table", str(path), "--seeds", "1", "--budget", "24", "--ref-ppl", "vocab", "--workers", "3",
                       "--strategies", "ehvi+pareto (default)", "--proposal-time", "0", "2",
                       "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "| ehvi+pareto (default) d=0 |" in printed and "| ehvi+pareto (default) d=2 |" in printed
    payload = json.loads(out_json.read_text())
    assert payload["proposal_time"] == [0.0, 2.0]
    assert set(payload["summary"]["ehvi+pareto (default) d=2"]) >= {"time90", "time95", "time99"}
    with pytest.raises(ValueError, match="proposal-time"):
        bench.main(["--table", str(path), "--proposal-time", "-1"])
