"""One exclusive file lock for every place that needs one: a cache entry being computed, a device
being timed, a new MLflow SQLite store being opened.

The kernel releases an `flock` when every copy of its file descriptor is closed, so a run killed
with -9 normally frees it; a process that inherited the descriptor (a forked worker left behind)
would keep it, so the holder writes who it is (pid, host, start time) into the lock file, and a
waiter that finds the recorded holder dead takes the lock over by replacing the lock file. Taking
over and starting to hold both happen under `<lock>.takeover`, so a process that just locked the
file cannot lose it to a waiter that read the previous holder's pid. A waiter says for whom it
waits, at once and every minute.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("runner")

LOCK_POLL_S = 0.5
LOCK_REPORT_S = 60.0  # how often a waiting process says again whom it waits for


@dataclass
class LockRecord:
    path: str
    waited_s: float  # time spent waiting for another holder to release it
    held_by: str | None  # who held it when this process asked, as that holder wrote it


def _say_waiting(path: Path, holder: str) -> None:
    log.warning("waiting for %s, held by %s; it is released when that run ends", path, holder)


def _holder() -> dict[str, Any]:
    process = psutil.Process()
    return {"pid": process.pid, "host": socket.gethostname(), "started": process.create_time(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _describe(holder: dict[str, Any]) -> str:
    if "pid" not in holder:
        return "another process"
    return f"pid {holder['pid']} on {holder.get('host')} since {holder.get('since')}"


def _holder_is_dead(holder: dict[str, Any]) -> bool:
    """Whether the process that wrote `holder` into a lock file is gone (only knowable on its
    host; a reused pid is told apart by its start time)."""
    if holder.get("host") != socket.gethostname() or "pid" not in holder:
        return False
    try:
        return abs(psutil.Process(int(holder["pid"])).create_time() - holder["started"]) > 1
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, TypeError, ValueError, KeyError):
        return False


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def _flocked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path, on_wait: Callable[[Path, str], None] = _say_waiting,
              ) -> Iterator[LockRecord]:
    """Hold the exclusive lock of `path` (created with its folder). While another process holds
    it, `on_wait(path, holder)` is called at once and every minute; a dead holder's lock is
    taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    guard_path = path.with_name(f"{path.name}.takeover")
    started = time.perf_counter()
    reported = 0.0
    held_by: str | None = None
    while True:
        # O_CLOEXEC: a tool started while it is held does not inherit it
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                with _flocked(guard_path):
                    if (_same_file(fd, path) and _holder_is_dead(holder)
                            and _read_holder(fd) == holder):
                        log.warning("lock %s is held by %s, which is gone (a process it left "
                                    "behind keeps the lock): taking it over", path,
                                    _describe(holder))
                        path.unlink()
                        continue
                held_by = held_by or _describe(holder)
                now = time.monotonic()
                if now - reported >= LOCK_REPORT_S:
                    on_wait(path, _describe(holder))
                    reported = now
                time.sleep(LOCK_POLL_S)
                continue
            with _flocked(guard_path):
                if not _same_file(fd, path):
                    continue  # taken over by a waiter while this process was locking it: retry
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(_holder()).encode(), 0)
            try:
                yield LockRecord(str(path), time.perf_counter() - started, held_by)
            finally:
                os.ftruncate(fd, 0)  # a released lock names no holder that could be taken over
                fcntl.flock(fd, fcntl.LOCK_UN)
            return
        finally:
            os.close(fd)
