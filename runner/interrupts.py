"""Ctrl-C and SIGTERM stop a run the same way: the main process raises KeyboardInterrupt, the
MLflow run ends KILLED, and every finished stage and chunk stays in the cache for the rerun."""

from __future__ import annotations

import signal
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
