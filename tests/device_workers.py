"""Worker functions for the tests of runner.devices. They live apart from the test modules
because a spawned worker process imports the module its function comes from: this one is
light (no MLflow, no Hydra composition)."""

from __future__ import annotations

import os
import time

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
