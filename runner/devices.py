"""Several devices at once (`chip.devices=[0,1,2,3]`): one worker process per device.

`infer` shards the dataset's chunks over the devices; `benchmark` measures on every device
concurrently and reports each device's figures and their aggregate, where the guides multiply
one chip's throughput by the number of chips. A single device runs in this process.

Concurrency of the benchmark: the workers start together (after every model is loaded), and a
worker whose measurement is done keeps running untimed batches until every device's is done,
so each device's timed calls are all made while every device is busy.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from runner.backends import backend_for
from runner.config import RunConfig
from runner.errors import RunnerError
from runner.interrupts import die_with_parent
from runner.measurement import Measurement, measure

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


def run_on_devices(worker: Callable[..., R], work: dict[int, tuple[Any, ...]]) -> dict[int, R]:
    """`worker(device, *args)` for each device of `work`, concurrently, one process each (in
    this process when there is one device). A worker's error is raised here, naming its device.
    `worker` must be a module-level function and its arguments picklable."""
    if len(work) <= 1:
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


@dataclass
class DeviceBenchmark:
    """One device's measurement, taken while the other devices were measured too."""

    device: int
    measurement: Measurement
    session: dict[str, Any]
    # the runtime's own execute times of the timed calls (ais_bench), else empty
    own_compute_ms: list[float] = field(default_factory=list)
    # time.perf_counter_ns (CLOCK_MONOTONIC on Linux: one clock for every process of the host):
    # right after the last timed call, and the span the device was busy (warm-up, timed calls,
    # untimed calls while other devices were still measuring)
    end_ns: int = 0
    busy_start_ns: int = 0
    busy_end_ns: int = 0
    untimed_calls_after: int = 0

    @property
    def start_ns(self) -> int:
        return self.end_ns - int(self.measurement.wall_s * 1e9)


def benchmark_on_device(device: int, cfg: RunConfig, model_path: Path,
                        make_batch: Callable[[RunConfig], np.ndarray]) -> DeviceBenchmark:
    session = backend_for(cfg.chip).open_session(model_path, cfg.chip, device)
    batch = make_batch(cfg)
    start_together()
    busy_start_ns = time.perf_counter_ns()
    result = measure(lambda: session.run(batch), cfg.benchmark, cfg.bs)
    end_ns = time.perf_counter_ns()
    own = session.own_compute_ms()
    # the timed calls are the last ones the session ran (the warm-up came before them)
    own = own[-result.iterations :] if len(own) >= result.iterations else []
    untimed = keep_busy_until_all_done(lambda: session.run(batch))
    return DeviceBenchmark(device, result, session.describe(), own, end_ns, busy_start_ns,
                           time.perf_counter_ns(), untimed)


def benchmark(cfg: RunConfig, model_path: Path,
              make_batch: Callable[[RunConfig], np.ndarray]) -> list[DeviceBenchmark]:
    """The benchmark on every device of chip.devices at once, in device order."""
    if cfg.chip.device_type == "cpu" and len(cfg.chip.devices) > 1 and not cfg.chip.threads:
        log.warning("chip.devices=%s on the CPU with chip.threads=0: every worker uses all "
                    "cores; set chip.threads (e.g. 1) to share them", cfg.chip.devices)
    work = {device: (cfg, model_path, make_batch) for device in cfg.chip.devices}
    return list(run_on_devices(benchmark_on_device, work).values())


def own_metrics(result: DeviceBenchmark, runtime: str, bs: int) -> dict[str, float]:
    """Throughput by ais_bench's formula on the runtime's own execute times, where it has them."""
    if not result.own_compute_ms:
        return {}
    mean_ms = float(np.mean(result.own_compute_ms))
    return {f"{runtime}_throughput_fps": 1000.0 * bs / mean_ms,
            f"{runtime}_compute_ms_mean": mean_ms}


AGGREGATE_METHOD = {
    "concurrency": "one worker process per device; all start after every model is loaded; a "
                   "worker done measuring runs untimed batches until every device is done",
    "throughput_fps": "sum over devices of 1000 * bs / mean(compute ms)",
    "wall_fps": "sum over devices of bs * calls / wall seconds of the device's timed loop",
    "latency_ms_*": "percentiles of every device's timed calls pooled",
    "benchmark_overlap": "the smallest share of a device's timed loop spent while every device "
                         "was busy (1.0: all timed calls were made under full load)",
    "per device": "<metric>_dev<id>, each device's own figure",
}
PER_DEVICE_METRICS = ("throughput_fps", "wall_fps", "latency_ms_p50", "latency_ms_p99",
                      "benchmark_stable")


def aggregate_metrics(results: list[DeviceBenchmark], runtime: str, bs: int) -> dict[str, float]:
    """The run's benchmark metrics: one device's as measured; several devices' aggregate (named
    as one device's) plus each device's under `<metric>_dev<id>`."""
    if len(results) == 1:
        (only,) = results
        return {**only.measurement.metrics(), **own_metrics(only, runtime, bs)}
    metrics: dict[str, float] = {}
    for result in results:
        own = own_metrics(result, runtime, bs)
        device_metrics = {**result.measurement.metrics(), **own}
        for key in (*PER_DEVICE_METRICS, *own):
            metrics[f"{key}_dev{result.device}"] = device_metrics[key]
    pooled = np.concatenate([r.measurement.compute_ms for r in results])
    all_busy_from = max(r.busy_start_ns for r in results)
    all_busy_until = min(r.busy_end_ns for r in results)

    def share_under_full_load(r: DeviceBenchmark) -> float:
        covered = min(r.end_ns, all_busy_until) - max(r.start_ns, all_busy_from)
        return max(0, covered) / max(1, r.end_ns - r.start_ns)

    metrics.update({
        "throughput_fps": sum(r.measurement.throughput_fps for r in results),
        "wall_fps": sum(r.measurement.wall_fps for r in results),
        "latency_ms_mean": float(np.mean(pooled)),
        "latency_ms_min": float(np.min(pooled)),
        "latency_ms_max": float(np.max(pooled)),
        "latency_ms_p50": float(np.percentile(pooled, 50)),
        "latency_ms_p90": float(np.percentile(pooled, 90)),
        "latency_ms_p99": float(np.percentile(pooled, 99)),
        "benchmark_iterations": float(sum(r.measurement.iterations for r in results)),
        "benchmark_stable": float(all(r.measurement.stable for r in results)),
        "benchmark_window_spread": max(r.measurement.spread for r in results),
        "benchmark_devices": float(len(results)),
        "benchmark_overlap": min(share_under_full_load(r) for r in results),
    })
    if all(f"{runtime}_throughput_fps_dev{r.device}" in metrics for r in results):
        metrics[f"{runtime}_throughput_fps"] = sum(
            metrics[f"{runtime}_throughput_fps_dev{r.device}"] for r in results)
    return metrics
