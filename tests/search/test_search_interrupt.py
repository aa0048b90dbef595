"""Ctrl-C (SIGINT) and SIGTERM stop a search cleanly: exit 130 / 143, one line saying how to continue, nothing lost.

The handler is checked in-process (fast); the whole command with real Ray searches in subprocesses (slow).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from squeezelstm.search.backends import SearchInterrupted, StopSignals
from squeezelstm.search.controller import read_journal
from squeezelstm.search.cli._search import continue_command, interrupted_line


def test_first_signal_ends_ray_tunes_loop_and_a_second_raises_at_once():
    ended = []
    # what SIGINT did before (Python's default_int_handler, or SIG_IGN in a job a shell started with `&`)
    before = signal.getsignal(signal.SIGINT)
    old = signal.signal(signal.SIGUSR1, lambda sig, frame: ended.append(sig))  # stands for tune.run's handler
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert stop.signum == signal.SIGTERM and ended == [signal.SIGUSR1]
            with pytest.raises(SearchInterrupted) as info:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        assert info.value.immediate and info.value.exit_status == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) is before  # handlers restored
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        with pytest.raises(SearchInterrupted) as info, StopSignals():  # outside Tune's loop: at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert info.value.exit_status == 130 and info.value.immediate
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_the_line_says_what_finished_and_the_exact_command_that_continues():
    exc = SearchInterrupted(signal.SIGINT, counts={"finished": 2, "pruned": 1, "running": 1, "failed": 0})
    argv = ["search", "--space", "my space.yaml", "--trials", "4", "--experiment", "e"]
    line = interrupted_line(exc, "e", continue_command(argv, argparse.Namespace()))
    assert "\n" not in line and "interrupted by SIGINT" in line and "2 finished, 1 pruned" in line
    assert "1 running trial(s) keep their last epoch checkpoint" in line
    assert line.endswith("continue with: squeezelstm search --space 'my space.yaml' --trials 4 --experiment e --resume")
    assert continue_command(argv + ["--resume"], argparse.Namespace()).count("--resume") == 1
    demo = argparse.Namespace(space="default", trials=12, experiment="demo-1", sampler="ehvi", pruner=None, epochs=None,
                              storage=None, tracking_uri=None, address=None, overrides=["data.path=x"], no_tracking=True)
    assert continue_command(None, demo) == ("squeezelstm search --space default --trials 12 --experiment demo-1 "
                                            "--sampler ehvi --set data.path=x --no-tracking --resume")


@pytest.mark.parametrize("command", ["search", "demo"])
def test_a_bare_ctrl_c_stops_search_and_demo_with_the_same_line(command, monkeypatch, capsys, tmp_path):
    """A KeyboardInterrupt that met Python's default handler outside the runner's (Ray may restore it)
    stops either command as the runner's SIGINT does: exit 130 and the one line saying how to continue."""
    from squeezelstm.search.cli import _search, main

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_search, "_run", ctrl_c)
    argv = {"search": ["search", "--space", "tiny.yaml", "--trials", "2", "--experiment", "e"],
            "demo": ["demo", "--out-dir", str(tmp_path), "--experiment", "e", "--trials", "2"]}[command]
    assert main(argv) == 130
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "search 'e' interrupted by SIGINT (stopped at once): trials as recorded" in err[0], err
    assert "continue with: squeezelstm search --space " in err[0] and " --trials 2 --experiment e " in err[0]
    assert err[0].endswith(" --resume")


# -- the real command ---------------------------------------------------------------------------

SPACE = (Path(__file__).parents[1] / "data" / "tiny_interrupt.yaml").read_text()  # a tiny space for fast Ray searches


def _head() -> list[str]:
    script = Path(sys.executable).with_name("squeezelstm")
    return [str(script)] if script.exists() else [sys.executable, "-c",
                                                  "import sys; from squeezelstm.search.cli import main; sys.exit(main())"]


def _args(tmp: Path) -> list[str]:
    return ["search", "--space", str(tmp / "space.yaml"), "--trials", "2", "--experiment", "stop", "--storage",
            str(tmp / "runs"), "--no-tracking", "--max-concurrent", "1", "--pruner", "none", "--sampler", "random",
            "--quiet"]


def _records(tmp: Path) -> list[dict]:
    """The controller's records as they are now: the snapshot and the event log's tail."""
    try:
        state = read_journal(tmp / "runs" / "stop" / "controller")
    except (OSError, ValueError):
        return []
    return [state.records[n].to_dict() for n in sorted(state.records)]


def _start_and_signal(tmp: Path, signals: list[int]) -> tuple[subprocess.CompletedProcess, float]:
    """Start the search, wait until a trial has trained an epoch, send ``signals`` (0.3 s apart) to the driver."""
    (tmp / "space.yaml").write_text(SPACE)
    proc = subprocess.Popen(_head() + _args(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if any(r["status"] == "running" and r["history"] for r in _records(tmp)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        sent = time.time()
        for i, sig in enumerate(signals):
            if i:
                time.sleep(0.3)
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.time() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _stop_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "interrupted by" in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_ctrl_c_stops_with_130_and_the_printed_command_continues_the_search(tmp_path):
    run, _ = _start_and_signal(tmp_path, [signal.SIGINT])
    assert run.returncode == 130, run.stderr[-3000:]
    line = _stop_line(run.stderr)
    assert "interrupted by SIGINT (stopped)" in line and "keep their last epoch checkpoint" in line
    before = {r["number"]: r for r in _records(tmp_path)}
    running = [n for n, r in before.items() if r["status"] == "running" and r["history"]]
    assert running and (tmp_path / "runs" / "stop" / "trials" / f"trial_{running[0]:04d}").is_dir()
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[0] == "squeezelstm" and command[-1] == "--resume"
    again = subprocess.run(_head() + command[1:], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = {r["number"]: r for r in _records(tmp_path)}
    assert len(after) == 2 and all(r["status"] != "running" for r in after.values())
    for n in running:  # continued from its checkpoint, not trained from the start
        assert after[n]["history"][: len(before[n]["history"])] == before[n]["history"]


@pytest.mark.slow
def test_sigterm_stops_with_143_and_a_second_ctrl_c_stops_at_once(tmp_path):
    (tmp_path / "a").mkdir()
    run, _ = _start_and_signal(tmp_path / "a", [signal.SIGTERM])
    assert run.returncode == 143, run.stderr[-3000:]
    assert "interrupted by SIGTERM (stopped)" in _stop_line(run.stderr)
    (tmp_path / "b").mkdir()
    run, took = _start_and_signal(tmp_path / "b", [signal.SIGINT, signal.SIGINT])
    assert run.returncode == 130, run.stderr[-3000:]
    assert "interrupted by SIGINT" in _stop_line(run.stderr)
