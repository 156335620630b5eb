"""Several devices at once (`chip.devices=[0,1,2,3]`): one worker process per device.

`infer` shards the dataset's chunks over the devices (`shard`); the benchmark measures on every
device concurrently (`runner.device_benchmark`). A single device runs in this process, unless a
fresh one is asked for (the benchmark's isolated repeats).
Workers start together (`start_together`, after every model is loaded), and a worker done with
its timed part can keep its device busy until every device is done (`keep_busy_until_all_done`).

Worker processes are spawned, not forked: the parent has ONNX Runtime / PyTorch thread pools
that a forked child would inherit in an unusable state.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from runner.errors import RunnerError
from runner.interrupts import die_with_parent

log = logging.getLogger("runner")
T = TypeVar("T")
R = TypeVar("R")
START_TIMEOUT_S = 600.0  # loading a model on a device can take minutes (CUDA init, OM load)
FAILURE_GRACE_S = 5.0  # how long the other workers' errors are awaited after a first failure

# set in a worker process: the barrier all devices' workers share, and how many are done
_start_barrier: Any = None
_finished: Any = None
_worker_count = 1


def shard(items: list[T], devices: list[int]) -> dict[int, list[T]]:
    """Round-robin share of `items` per device, in order; devices left without items omitted."""
    shares = {device: items[i :: len(devices)] for i, device in enumerate(devices)}
    return {device: share for device, share in shares.items() if share}


def start_together() -> None:
    """Called by a worker right before its timed part: returns when every device is ready."""
    if _start_barrier is not None:
        _start_barrier.wait(timeout=START_TIMEOUT_S)


def _mark_finished() -> None:
    if _finished is not None:
        with _finished.get_lock():
            _finished.value += 1


def keep_busy_until_all_done(run_once: Callable[[], Any]) -> int:
    """Called by a worker after its timed part: runs `run_once` (untimed) until every device's
    worker has finished its timed part too; the number of calls made."""
    _mark_finished()
    calls = 0
    while _finished is not None and _finished.value < _worker_count:
        run_once()
        calls += 1
    return calls


def _worker_main(worker: Callable[..., Any], device: int, args: tuple[Any, ...], barrier: Any,
                 finished: Any, results: Any) -> None:
    global _start_barrier, _finished, _worker_count
    die_with_parent()  # a killed runner must not leave workers holding its devices
    _start_barrier, _finished, _worker_count = barrier, finished, barrier.parties
    try:
        results.put((device, True, worker(device, *args)))
    except BaseException as error:
        barrier.abort()  # release the other devices' workers waiting in start_together ...
        _mark_finished()  # ... or in keep_busy_until_all_done
        portable = error if isinstance(error, RunnerError) else (
            f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        results.put((device, False, portable))


def _raise_failure(failures: dict[int, Any]) -> None:
    # a worker broken out of start_together by another's failure is not the cause
    causes = {d: v for d, v in failures.items() if "BrokenBarrierError" not in str(v)[:40]}
    device, value = sorted((causes or failures).items())[0]
    if isinstance(value, RunnerError):
        raise type(value)(f"device {device}: {value}")
    raise RuntimeError(f"the worker for device {device} failed: {value}")


def run_on_devices(worker: Callable[..., R], work: dict[int, tuple[Any, ...]],
                   fresh_process: bool = False) -> dict[int, R]:
    """`worker(device, *args)` for each device of `work`, concurrently, one process each (in
    this process when there is one device, unless `fresh_process`). A worker's error is raised
    here, naming its device. `worker` must be a module-level function and its arguments
    picklable."""
    if len(work) <= 1 and not fresh_process:
        return {device: worker(device, *args) for device, args in work.items()}
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(work))
    finished = context.Value("i", 0)
    results = context.Queue()
    processes = {
        device: context.Process(target=_worker_main,
                                args=(worker, device, args, barrier, finished, results),
                                name=f"runner-device-{device}", daemon=True)
        for device, args in work.items()
    }
    outcomes: dict[int, tuple[bool, Any]] = {}
    stop_at = float("inf")  # after a failure, the others are stopped once their errors are in
    try:
        for process in processes.values():
            process.start()
        while len(outcomes) < len(processes) and time.monotonic() < stop_at:
            try:
                device, ok, value = results.get(timeout=1.0)
                outcomes[device] = (ok, value)
                if not ok:
                    stop_at = min(stop_at, time.monotonic() + FAILURE_GRACE_S)
                continue
            except queue.Empty:
                pass
            dead = {d: p.exitcode for d, p in processes.items()
                    if d not in outcomes and p.exitcode is not None}
            if dead and results.empty():
                barrier.abort()
                device, code = sorted(dead.items())[0]
                raise RuntimeError(
                    f"the worker for device {device} died (exit code {code}) without a result"
                )
    finally:
        for process in processes.values():
            if process.is_alive() and len(outcomes) < len(processes):
                process.terminate()
            process.join()
    failures = {d: value for d, (ok, value) in outcomes.items() if not ok}
    if failures:
        _raise_failure(failures)
    return {device: outcomes[device][1] for device in work}
