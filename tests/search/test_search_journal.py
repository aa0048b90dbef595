"""The controller's records journal: one appended line per event, a whole snapshot now and then, and a resume
that reads snapshot + log tail to exactly the state the driver had (a torn last line after SIGKILL dropped)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from squeezelstm.search.backends import RecordsFile, SearchPaths, read_live_records
from squeezelstm.search.config import SearchConfig
from squeezelstm.search.controller import (LOG_FILE, SNAPSHOT_FILE, JournalState, RecordJournal, SearchController,
                                           read_journal)
from squeezelstm.search.pareto import TrialRecord
from squeezelstm.search.space import parse_space

VOCAB = 200
RAW = {
    "name": "toy",
    "data": {"corpus": "synthetic", "vocab_size": VOCAB},
    "model": {"cell": {"choice": ["lstm", "grouped"]}, "hidden_size": {"int": [8, 64], "step": 8},
              "embedding_size": 16},
    "train": {"lr": {"float": [1e-3, 1e-2], "log": True}, "epochs": 3},
    "families": {"grouped": {"groups": {"choice": [2, 4]}}},
    "budget": {"max_params": 30_000},
}


def controller(state, every: float = 3600.0) -> SearchController:
    config = SearchConfig(parse_space(RAW), sampler="random", pruner="median", seed=3, experiment="journal",
                          pruner_options={"n_startup_trials": 1, "n_warmup_steps": 0})
    return SearchController(config, state_dir=state, vocab_size=VOCAB, snapshot_every_s=every)


def drive(c: SearchController, trials: int) -> None:
    """Trials through suggest/report/complete; the last one left running after an epoch."""
    for i in range(trials):
        spec = c.suggest()
        ppl = 50.0 + (spec.number * 37) % 40
        for epoch in (1, 2, 3):
            if c.report(spec.number, epoch, {"valid_ppl": ppl * (1 + 1 / epoch)}) or i == trials - 1:
                break
        if i < trials - 1:
            c.complete(spec.number, "finished", {"valid_ppl": ppl * 1.33, "test_ppl": ppl})


def as_dicts(records) -> list[dict]:
    return [r.to_dict() for r in records]


def test_events_are_lines_and_a_resume_reads_snapshot_plus_log_to_the_same_state(tmp_path):
    first = controller(tmp_path)
    drive(first, 6)
    lines = (tmp_path / LOG_FILE).read_text().splitlines()
    assert not (tmp_path / SNAPSHOT_FILE).exists()  # no snapshot due within the hour: nothing rewritten whole
    assert len(lines) >= 6 * 2 and all(json.loads(line)["rejected"] == first.rejected for line in lines[-1:])
    state = read_journal(tmp_path)
    assert as_dicts(state.records[n] for n in sorted(state.records)) == as_dicts(first.records())
    before, decided = first.records(), set(first._prune_decided)
    del first

    second = controller(tmp_path)  # resumes: folds the log into a snapshot before appending
    assert as_dicts(second.records()) == as_dicts(before) and second._prune_decided == decided
    assert (tmp_path / SNAPSHOT_FILE).exists() and (tmp_path / LOG_FILE).stat().st_size == 0
    [running] = second.unfinished()
    second.report(running.number, 2, {"valid_ppl": 70.0})
    second.complete(running.number, "finished", {"valid_ppl": 65.0})
    assert len((tmp_path / LOG_FILE).read_text().splitlines()) == 2
    assert as_dicts(controller(tmp_path).records()) == as_dicts(second.records())


def test_flush_writes_the_file_a_full_rewrite_wrote(tmp_path):
    c = controller(tmp_path)
    drive(c, 5)
    c.flush()
    data = json.loads((tmp_path / SNAPSHOT_FILE).read_text())
    # what records.json held when every event rewrote it
    assert data == {"version": 1, "records": as_dicts(c.records()), "prune_decided": sorted(c._prune_decided),
                    "rejected": c.rejected}
    assert (tmp_path / LOG_FILE).stat().st_size == 0


def test_a_snapshot_at_most_every_so_often(tmp_path, monkeypatch):
    writes = []
    real = RecordJournal.snapshot
    monkeypatch.setattr(RecordJournal, "snapshot", lambda self, state: (writes.append(1), real(self, state)))
    drive(controller(tmp_path / "hour", every=3600.0), 4)
    assert writes == []
    drive(controller(tmp_path / "always", every=0.0), 4)
    assert len(writes) >= 4 * 3  # every event (the old behaviour)
    assert (tmp_path / "always" / LOG_FILE).exists() is False or (tmp_path / "always" / LOG_FILE).stat().st_size == 0


def test_torn_last_line_is_dropped_and_a_bad_line_before_it_is_an_error(tmp_path):
    c = controller(tmp_path)
    drive(c, 3)
    whole = as_dicts(c.records())
    c._journal.close()
    log = tmp_path / LOG_FILE
    text = log.read_bytes()
    # a SIGKILL in the middle of a write: half a line, no newline
    log.write_bytes(text + b'{"rejected": 0, "record": {"number": 99, "fam')
    assert as_dicts(controller(tmp_path).records()) == whole
    assert log.stat().st_size == 0  # compacted before anything new was appended after the torn bytes
    # a line that does not parse, followed by more lines, is not a torn tail: the file is damaged
    (tmp_path / SNAPSHOT_FILE).unlink()
    log.write_bytes(text.replace(b"\n", b"\nnot json\n", 1))
    with pytest.raises(ValueError, match=f"{LOG_FILE} are unreadable at line 2"):
        read_journal(tmp_path)


def test_killed_between_snapshot_and_emptying_the_log_replays_to_the_same_state(tmp_path):
    c = controller(tmp_path)
    drive(c, 4)
    lines = (tmp_path / LOG_FILE).read_bytes()
    c.flush()  # the snapshot is written ...
    (tmp_path / LOG_FILE).write_bytes(lines)  # ... and the driver dies before the log is emptied
    state = read_journal(tmp_path)
    assert as_dicts(state.records[n] for n in sorted(state.records)) == as_dicts(c.records())
    assert state.prune_decided == c._prune_decided and state.rejected == c.rejected


CHILD = textwrap.dedent("""
    import json, sys
    from squeezelstm.search.config import SearchConfig
    from squeezelstm.search.controller import SearchController
    from squeezelstm.search.space import parse_space
    config = SearchConfig(parse_space(json.loads(sys.argv[2])), sampler="random", pruner="none", seed=1,
                          experiment="killed")
    c = SearchController(config, state_dir=sys.argv[1], vocab_size=200, snapshot_every_s=0.2)
    n = 0
    while True:  # until SIGKILL
        spec = c.suggest()
        for epoch in (1, 2, 3):
            c.report(spec.number, epoch, {"valid_ppl": 100.0 / epoch + n % 7})
        c.complete(spec.number, "finished", {"valid_ppl": 40.0 + n % 7})
        n += 1
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_resume_after_sigkill_reads_exactly_what_was_logged(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), json.dumps(RAW)], stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if (tmp_path / SNAPSHOT_FILE).exists() and (tmp_path / LOG_FILE).exists() \
                    and len(read_journal(tmp_path).records) >= 30:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    logged = read_journal(tmp_path)  # what the dead driver left: snapshot + log, a torn tail dropped
    assert len(logged.records) >= 30
    config = SearchConfig(parse_space(RAW), sampler="random", pruner="none", seed=1, experiment="killed")
    resumed = SearchController(config, state_dir=tmp_path, vocab_size=VOCAB)
    assert as_dicts(resumed.records()) == as_dicts(logged.records[n] for n in sorted(logged.records))
    numbers = [r.number for r in resumed.records()]
    assert numbers == sorted(numbers) and all(r.status in ("running", "finished") for r in resumed.records())
    assert len(resumed.unfinished()) <= 1  # at most the trial that was between suggest and complete
    assert resumed.suggest().number > max(numbers)


def test_live_readers_see_the_journal_between_records_file_writes(tmp_path):
    paths = SearchPaths(tmp_path, tmp_path / "controller", tmp_path / "trials", str(tmp_path / "ray"))
    c = controller(paths.state_dir)
    records_file = RecordsFile(paths.records_file, {"experiment": "journal"}, every_s=3600.0)
    drive(c, 2)
    assert records_file.maybe_write(c.records) is True
    drive(c, 2)
    assert records_file.maybe_write(c.records) is False  # not within the hour: the file lags ...
    meta, records = read_live_records(paths)
    assert meta == {"experiment": "journal"} and as_dicts(records) == as_dicts(c.records())  # ... the reader not
    records_file.write(c.records())
    assert json.loads(paths.records_file.read_text())["records"] == json.loads(json.dumps(as_dicts(c.records())))


def test_bad_snapshot_interval():
    with pytest.raises(ValueError, match="snapshot_every_s"):
        RecordJournal("x", snapshot_every_s=-1)
    state = JournalState({1: TrialRecord(number=1, family="lstm", params=10)}, {1}, 2)
    assert state.to_dict()["prune_decided"] == [1]
