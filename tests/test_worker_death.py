"""Workers die with the runner: kill -9 of the main process (an OOM kill, a scheduler's hard
limit) must not leave decode or device workers computing, holding its locks and devices."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from runner.config import PROJECT_ROOT

PARENTS = {
    "device workers": """
import sys
from runner.device_pool import run_on_devices
from tests.device_workers import compute_until_killed
run_on_devices(compute_until_killed, {0: (sys.argv[1],), 1: (sys.argv[1],)})
""",
    "decode pool": """
import sys
from concurrent.futures import ProcessPoolExecutor
from runner.interrupts import ignore_in_worker
from tests.device_workers import decode_until_killed
with ProcessPoolExecutor(max_workers=2, initializer=ignore_in_worker) as pool:
    for future in [pool.submit(decode_until_killed, sys.argv[1]) for _ in range(2)]:
        future.result()
""",
}


@pytest.mark.parametrize("kind", sorted(PARENTS))
def test_workers_die_when_the_main_process_is_killed(tmp_path: Path, kind: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENTS[kind], str(tmp_path)],
                              cwd=PROJECT_ROOT, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2:
            assert parent.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
            workers = [int(p.read_text()) for p in tmp_path.glob("*.pid") if p.read_text()]
        parent.kill()  # SIGKILL: no handler, no finally in the parent runs
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in workers if psutil.pid_exists(pid)
                     and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"{kind} outlived the killed main process: {alive}"
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
