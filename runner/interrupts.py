"""Ctrl-C and SIGTERM stop a run the same way: the main process raises KeyboardInterrupt, the
MLflow run ends KILLED, and every finished stage and chunk stays in the cache for the rerun."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from types import FrameType

received: list[int] = []  # signals that stopped this process, for the final message


def _interrupt(signum: int, frame: FrameType | None) -> None:
    received.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install() -> None:
    """SIGTERM (kill, a batch scheduler's time limit) takes the KeyboardInterrupt path, and so
    does SIGINT even where it was inherited as ignored (a non-interactive shell starts background
    jobs that way), so a Ctrl-C or `kill -INT` always ends the run KILLED with its work kept."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def ignore_in_worker() -> None:
    """Worker processes leave interrupts to the main process, which stops them: a Ctrl-C sent to
    the whole process group then ends in one message, not a traceback per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()


PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_CHECK_S = 1.0


def die_with_parent() -> None:
    """End this worker process when the process that started it dies, even by kill -9.

    A worker ignores SIGINT/SIGTERM (the main process stops it), so when the main process is
    killed outright nothing would stop it: it would keep computing, and a forked worker keeps
    the main process's file locks (the stage's cache lock) held, hanging the rerun. On Linux the
    kernel sends SIGKILL on the parent's death (PR_SET_PDEATHSIG); elsewhere, or if that call
    fails, a thread polls the parent. A parent that died before this call is caught by
    comparing the parent's pid.
    """
    parent = multiprocessing.parent_process()
    expected = parent.pid if parent is not None else None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if expected is not None and os.getppid() != expected:
                    os._exit(1)  # the parent died before the death signal was set up
                return
        except (OSError, AttributeError):
            pass
    _watch_parent(expected if expected is not None else os.getppid())


def _watch_parent(pid: int) -> None:
    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
