"""One driver per search: a lock file in the experiment's storage folder, ``<experiment dir>/driver.lock``.

Two drivers on one search interleave their trial numbers in one study, launch the same
configurations twice and overwrite each other's records and MLflow front. The lock refuses the
second one with a line naming the first (host, pid, since when).

The holder keeps an exclusive ``flock`` on the file for its lifetime, so the kernel releases it
when the driver dies however it dies (SIGKILL, OOM, reboot): a later driver on the same machine
gets the flock and takes over. For a storage folder shared between machines (NFS, where a flock
may be only local to a machine), the holder also refreshes the file's time every ``HEARTBEAT_S``;
a lock written by another host is stale once that time is ``STALE_S`` old (a lost node).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 10.0
STALE_S = 60.0


class DriverRunning(ValueError):
    """Another live driver holds the search: a one-line user error naming it."""


class DriverLock:
    """The held lock of one search; ``release()`` (or leaving the ``with`` block) gives it up."""

    def __init__(self, path: Path, fd: int, info: dict) -> None:
        self.path, self._fd, self.info = path, fd, info
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="driver-lock-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self._fd < 0:
            return
        self._stop.set()
        try:  # emptied, not removed: a driver that opened it meanwhile must not lock a removed file
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def describe(info: dict) -> str:
    """``host H, pid P, since T`` of a lock's contents."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info.get("since", 0))))
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, since {since}"


def acquire(experiment_dir: str | os.PathLike, experiment: str = "") -> DriverLock:
    """Take the search's driver lock, or raise ``DriverRunning`` naming the driver that holds it.

    A lock whose driver is gone (its flock released by the kernel, or on another host without a
    heartbeat for ``STALE_S``) is taken over.
    """
    path = Path(experiment_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DriverRunning(_refusal(experiment, _read(path), path)) from None
    try:
        old = _read(path)
        fresh = time.time() - path.stat().st_mtime < STALE_S
        if old and old.get("host") != socket.gethostname() and fresh:  # live on another machine (shared storage)
            raise DriverRunning(_refusal(experiment, old, path))
        # our own pid can only be in an old lock after a restart into the same pid (a container's pid 1)
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "boot_id": _boot_id()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    return DriverLock(path, fd, info)


@contextmanager
def hold(experiment_dir: str | os.PathLike, experiment: str = "",
         on_os_error: Callable[[], None] | None = None) -> Iterator[DriverLock]:
    """Hold the search's driver lock inside the block (``acquire``); ``on_os_error`` runs when the folder cannot
    be locked (to raise a clearer error). A search that wrote no file inside leaves none behind, lock included."""
    folder = Path(experiment_dir)
    try:
        lock = acquire(folder, experiment)
    except OSError:
        if on_os_error is not None:
            on_os_error()
        raise
    try:
        yield lock
    finally:
        lock.release()
        if not any(p.is_file() and p != lock.path for p in folder.rglob("*")):
            lock.path.unlink(missing_ok=True)  # e.g. a search refused for a bad argument before it began
            if not any(folder.iterdir()):
                folder.rmdir()


def _refusal(experiment: str, info: dict, path: Path) -> str:
    name = f"search {experiment!r}" if experiment else "this search"
    return (f"{name} is already being run by another driver ({describe(info)}; lock {path}); "
            "wait for it to end or stop it (Ctrl-C) before starting or resuming it here")


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


__all__ = ["DriverLock", "DriverRunning", "LOCK_FILE", "acquire", "describe", "hold"]
