"""One driver per search: a second driver is refused with a line naming the first; a dead driver's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from squeezelstm.search.backends import _driver_lock as driver_lock
from squeezelstm.search.cli import main
from squeezelstm.search.backends import DriverRunning
from squeezelstm.search.backends import acquire_driver_lock as acquire

HOLD = """
import sys, time
from squeezelstm.search.backends import acquire_driver_lock as acquire
lock = acquire(sys.argv[1], "dup")
print("held", flush=True)
time.sleep(600)
"""


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that takes the lock of ``folder`` and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_driver_is_refused_until_the_first_releases(tmp_path):
    lock = acquire(tmp_path, "dup")
    with pytest.raises(DriverRunning) as info:
        acquire(tmp_path, "dup")
    message = str(info.value)
    assert "\n" not in message and "search 'dup' is already being run" in message
    assert f"host {socket.gethostname()}, pid {os.getpid()}, since 20" in message
    lock.release()
    lock.release()  # twice is harmless
    with acquire(tmp_path, "dup") as again:
        assert json.loads((tmp_path / "driver.lock").read_text())["pid"] == os.getpid() == again.info["pid"]
    assert (tmp_path / "driver.lock").read_text() == ""


def test_the_lock_of_a_killed_driver_is_taken_over(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(DriverRunning, match=f"pid {holder.pid},"):
            acquire(tmp_path, "dup")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((tmp_path / "driver.lock").read_text())["pid"] == holder.pid  # left behind, stale
    with acquire(tmp_path, "dup") as lock:
        assert lock.info["pid"] == os.getpid()


def test_a_lock_from_another_host_counts_until_its_heartbeat_is_old(tmp_path):
    path = tmp_path / "driver.lock"
    path.write_text(json.dumps({"host": "node-7", "pid": 4242, "since": time.time() - 5}))
    with pytest.raises(DriverRunning, match="host node-7, pid 4242"):
        acquire(tmp_path, "dup")
    old = time.time() - driver_lock.STALE_S - 1
    os.utime(path, (old, old))  # a lost node: no heartbeat for STALE_S
    acquire(tmp_path, "dup").release()


def test_the_command_refuses_a_second_driver_in_one_line_and_leaves_the_search_alone(tmp_path, capsys, monkeypatch):
    space = tmp_path / "space.yaml"
    space.write_text("name: x\nbudget: {max_params: 20000}\ndata: {corpus: synthetic, vocab_size: 30}\n"
                     "model: {cell: lstm, hidden_size: 16, embedding_size: 16}\ntrain: {epochs: 1}\n")
    runs = tmp_path / "runs"
    holder = _holder(runs / "dup")
    try:
        for extra in ([], ["--resume"]):
            code = main(["search", "--space", str(space), "--trials", "2", "--experiment", "dup", "--storage", str(runs),
                         "--no-tracking", *extra])
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1, err
            assert f"another driver (host {socket.gethostname()}, pid {holder.pid}, since" in err
        assert not (runs / "dup" / "controller").exists()  # no state of the search was written
    finally:
        holder.kill()
        holder.wait()
