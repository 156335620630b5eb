"""One exclusive file lock for every place that needs one: a cache entry being computed, a device
being timed, a new MLflow SQLite store being opened.

`fcntl.flock` is released by the kernel when the holder dies, so a crashed run leaves no stale
lock. The holder writes who it is into the file, so a process that has to wait can say for whom.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("runner")


@dataclass
class LockRecord:
    path: str
    waited_s: float  # time spent waiting for another holder to release it
    held_by: str | None  # who held it when this process asked, as that holder wrote it


def _say_waiting(path: Path, holder: str) -> None:
    log.warning("waiting for %s, held by %s", path, holder)


@contextmanager
def file_lock(path: Path, on_wait: Callable[[Path, str], None] = _say_waiting,
              ) -> Iterator[LockRecord]:
    """Hold the exclusive lock of `path` (created with its folder); while another process holds
    it, `on_wait(path, holder)` is called once and the call blocks until it is released."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_CLOEXEC (Python's default): a tool or worker started while it is held does not inherit it
    with open(path, "a+") as handle:
        started = time.perf_counter()
        held_by = None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            held_by = handle.read().strip() or "another process"
            on_wait(path, held_by)
            fcntl.flock(handle, fcntl.LOCK_EX)
        waited_s = time.perf_counter() - started
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        try:
            yield LockRecord(str(path), waited_s, held_by)
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
