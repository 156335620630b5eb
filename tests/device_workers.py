"""Worker functions for the tests of runner.device_pool. They live apart from the test modules
because a spawned worker process imports the module its function comes from: this one is
light (no MLflow, no Hydra composition)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from runner import device_pool
from runner.errors import DatasetError


def report_process(device: int, tag: str) -> tuple[int, str, int, int]:
    device_pool.start_together()
    return device, tag, os.getpid(), time.perf_counter_ns()


def fail_on_device_one(device: int) -> int:
    if device == 1:
        raise DatasetError("chunk 3 is unreadable")
    device_pool.start_together()  # released by device 1's failure, not left waiting
    return device


def die_on_device_one(device: int) -> int:
    if device == 1:
        os._exit(3)
    return device


def compute_until_killed(device: int, pid_dir: str) -> int:
    """A device worker busy for minutes, as one mid-benchmark; it says where it runs first."""
    (Path(pid_dir) / f"device{device}.pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        sum(range(10000))
    return device


def decode_until_killed(pid_dir: str) -> int:
    """A decode-pool task busy for minutes."""
    (Path(pid_dir) / f"decode{os.getpid()}.pid").write_text(str(os.getpid()))
    time.sleep(300)
    return 0
