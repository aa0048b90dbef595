"""``squeezelstm search --resume`` after the driver is SIGKILLed mid-search.

A subprocess runs the real command; once a trial has finished and another has trained at least
one epoch, the whole process group is killed (driver and its local Ray). ``--resume`` must then
end with exactly the requested number of trials, never run a finished trial again, and continue
the interrupted trial from its checkpoint (its first epochs are not trained again).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from squeezelstm.search.controller import read_journal

# Epochs of about a second: long enough to catch a trial between two epochs, short enough for CI.
SPACE = (Path(__file__).parents[1] / "data" / "tiny_resume.yaml").read_text()  # a tiny space for fast Ray searches


def _command(tmp: Path, *extra: str) -> list[str]:
    script = Path(sys.executable).with_name("squeezelstm")
    head = [str(script)] if script.exists() else [sys.executable, "-c",
                                                  "import sys; from squeezelstm.search.cli import main; sys.exit(main())"]
    return head + ["search", "--space", str(tmp / "space.yaml"), "--trials", "4", "--experiment", "res",
                   "--storage", str(tmp / "runs"), "--no-tracking", "--max-concurrent", "1",
                   "--pruner", "none", "--sampler", "random", *extra]


def _records(tmp: Path) -> list[dict]:
    """The controller's records as a resumed driver reads them: the snapshot and the event log's tail."""
    try:
        state = read_journal(tmp / "runs" / "res" / "controller")
    except (OSError, ValueError):
        return []
    return [state.records[n].to_dict() for n in sorted(state.records)]


def _kill_session(pid: int) -> None:
    """SIGKILL the driver's process group, then any Ray worker of its session left orphaned."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(1.0)
    marker = f"_{pid}"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in cmd and any(part.startswith("--session-name=session_") and part.endswith(marker)
                                for part in cmd.split()):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_resume_after_driver_is_killed(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    env = dict(os.environ, RAY_DEDUP_LOGS="0")
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_command(tmp_path), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=tmp_path)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            recs = _records(tmp_path)
            done = [r for r in recs if r["status"] == "finished"]
            running = [r for r in recs if r["status"] == "running" and len(r["history"]) >= 1]
            if done and running:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the search ended before it could be interrupted:\n" + (tmp_path / "first.log").read_text()
        assert time.time() < deadline, "no finished trial within the time limit"
    finally:
        _kill_session(proc.pid)
        proc.wait()
        log.close()

    before = {r["number"]: r for r in _records(tmp_path)}
    finished_before = {n for n, r in before.items() if r["status"] == "finished"}
    interrupted = {n for n, r in before.items() if r["status"] == "running" and r["history"]}
    assert finished_before and interrupted

    run = subprocess.run(_command(tmp_path, "--resume", "--json"), capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    after = {r["number"]: r for r in _records(tmp_path)}
    assert len(after) == 4, f"expected exactly 4 trials, got {sorted(after)}"
    assert all(r["status"] in ("finished", "pruned", "failed", "diverged") for r in after.values())
    started = [int(line.split("trial ")[1].split()[0]) for line in run.stderr.splitlines() if " started" in line]
    assert not set(started) & finished_before, f"finished trials were run again: {started}"
    for n in finished_before:
        assert after[n] == before[n]  # untouched: same metrics, same end time
    for n in interrupted:
        # Continued from the checkpoint: the epochs trained before the kill are not trained again.
        assert after[n]["status"] == "finished"
        old = before[n]["history"]
        assert after[n]["history"][: len(old)] == old
        assert [h["epoch"] for h in after[n]["history"]] == [1, 2, 3]
    front = json.loads(run.stdout)
    assert front and all(after[t["number"]]["status"] == "finished" for t in front)
