"""The pure-inference benchmark on every device of `chip.devices` at once: each device's figures
and their aggregate, where the guides multiply one chip's throughput by the number of chips.

Concurrency: the workers start together (after every model is loaded), and a worker whose
measurement is done keeps running untimed batches until every device's is done, so each
device's timed calls are all made while every device is busy.

Isolated repeats (`benchmark.isolate_repeats`, the default): each repeat is a fresh process per
device with its own session, warm-up and timed run. Two runs of one config differ by what varies
between processes (memory placement, the host's moment) as well as between calls; repeats in
one process see only the latter, so their spread understated a run's noise (docs/results.md).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner import device_pool
from runner.backends import SessionSettings, backend_for
from runner.config import BenchmarkConfig, input_shape
from runner.measurement import Measurement, measure, repeats_isolated

log = logging.getLogger("runner")


@dataclass(frozen=True)
class BatchSpec:
    """The prepared input of the timed calls (made in each worker, not sent to it)."""

    bs: int
    input_size: int
    layout: str  # NCHW | NHWC
    kind: str  # random | zero, like ais_bench's --pure_data_type
    seed: int
    # model.preprocess.on_device=true: the model takes uint8 (N, H, W, 3) crops
    on_device: bool = False

    def make(self) -> np.ndarray:
        if self.on_device:
            shape = (self.bs, self.input_size, self.input_size, 3)
            if self.kind == "zero":
                return np.zeros(shape, dtype=np.uint8)
            return np.random.default_rng(self.seed).integers(0, 256, size=shape, dtype=np.uint8)
        shape = input_shape(self.bs, self.input_size, self.layout)
        if self.kind == "zero":
            return np.zeros(shape, dtype=np.float32)
        return np.random.default_rng(self.seed).standard_normal(shape, dtype=np.float32)


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
    # isolated repeats: each repeat's own result (its process's), in order; empty otherwise
    repeats: list[DeviceBenchmark] = field(default_factory=list)
    process_id: int = 0  # of the process that measured (the first repeat's, when isolated)

    @property
    def start_ns(self) -> int:
        return self.end_ns - int(self.measurement.wall_s * 1e9)


def benchmark_on_device(device: int, session_settings: SessionSettings, model_path: Path,
                        batch_spec: BatchSpec, method: BenchmarkConfig) -> DeviceBenchmark:
    """One device's measurement; a module-level function, so a worker process can run it."""
    session = backend_for(session_settings.runtime).open_session(model_path, session_settings,
                                                                 device)
    batch = batch_spec.make()
    device_pool.start_together()
    busy_start_ns = time.perf_counter_ns()
    result = measure(lambda: session.run(batch), method, batch_spec.bs)
    end_ns = time.perf_counter_ns()
    own = session.own_compute_ms()
    # the timed calls are the last ones the session ran (the warm-up came before them)
    own = own[-result.iterations :] if len(own) >= result.iterations else []
    untimed = device_pool.keep_busy_until_all_done(lambda: session.run(batch))
    return DeviceBenchmark(device, result, session.describe(), own, end_ns, busy_start_ns,
                           time.perf_counter_ns(), untimed, process_id=os.getpid())


def benchmark(devices: tuple[int, ...], session_settings: SessionSettings, model_path: Path,
              batch_spec: BatchSpec, method: BenchmarkConfig) -> list[DeviceBenchmark]:
    """The benchmark on every device at once, in device order."""
    if session_settings.device_type == "cpu" and len(devices) > 1 and not session_settings.threads:
        log.warning("chip.devices=%s on the CPU with chip.threads=0: every worker uses all "
                    "cores; set chip.threads (e.g. 1) to share them", list(devices))
    isolated = repeats_isolated(method)
    # isolated: each process measures one repeat
    per_process = dataclasses.replace(method, repeats=1) if isolated else method
    work = {device: (session_settings, model_path, batch_spec, per_process) for device in devices}
    if not isolated:
        return list(device_pool.run_on_devices(benchmark_on_device, work).values())
    per_repeat = [device_pool.run_on_devices(benchmark_on_device, work, fresh_process=True)
                  for _ in range(method.repeats)]
    return [merge_repeats([repeat[device] for repeat in per_repeat]) for device in devices]


def merge_repeats(repeats: list[DeviceBenchmark]) -> DeviceBenchmark:
    """One device's isolated repeats as one result: their timed runs in order, every warm-up
    counted, the first session's facts."""
    first, last = repeats[0], repeats[-1]
    measurement = Measurement(
        batch_size=first.measurement.batch_size,
        warmup_iters=sum(r.measurement.warmup_iters for r in repeats),
        warmup_s=sum(r.measurement.warmup_s for r in repeats),
        runs=[run for r in repeats for run in r.measurement.runs])
    # the runtime's own times only where every repeat has them (a figure over all or none)
    own = [ms for r in repeats for ms in r.own_compute_ms] if all(
        r.own_compute_ms for r in repeats) else []
    return DeviceBenchmark(
        first.device, measurement, first.session, own_compute_ms=own, end_ns=last.end_ns,
        busy_start_ns=first.busy_start_ns, busy_end_ns=last.busy_end_ns,
        untimed_calls_after=sum(r.untimed_calls_after for r in repeats), repeats=repeats,
        process_id=first.process_id)


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
# one-off costs a session reports in its facts (torch.compile, CUDA graph capture): made before
# the timed calls, so logged apart from them (with several devices: the slowest device's)
SESSION_METRICS = ("compile_s", "graph_capture_s")


def session_metrics(results: list[DeviceBenchmark]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key in SESSION_METRICS:
        values = {r.device: r.session[key] for r in results
                  if isinstance(r.session.get(key), int | float)}
        if values:
            metrics[key] = float(max(values.values()))
            if len(results) > 1:
                metrics.update({f"{key}_dev{d}": float(v) for d, v in values.items()})
    return metrics


def overlap(results: list[DeviceBenchmark]) -> float:
    """The smallest share of a device's timed loop made while every device was busy; isolated
    repeats: the smallest over the repeats (the devices are idle between them)."""
    if all(r.repeats for r in results):
        return min(overlap(list(same_repeat)) for same_repeat in zip(*(r.repeats for r in results),
                                                                       strict=True))
    all_busy_from = max(r.busy_start_ns for r in results)
    all_busy_until = min(r.busy_end_ns for r in results)

    def share_under_full_load(r: DeviceBenchmark) -> float:
        covered = min(r.end_ns, all_busy_until) - max(r.start_ns, all_busy_from)
        return max(0, covered) / max(1, r.end_ns - r.start_ns)

    return min(share_under_full_load(r) for r in results)


def aggregate_metrics(results: list[DeviceBenchmark], runtime: str, bs: int) -> dict[str, float]:
    """The run's benchmark metrics: one device's as measured; several devices' aggregate (named
    as one device's) plus each device's under `<metric>_dev<id>`."""
    # 1: each repeat ran in a fresh process, so their spread holds the variance between
    # processes too (what the figures of two runs of one config differ by)
    isolation = {"benchmark_isolated_repeats": float(all(r.repeats for r in results))}
    if len(results) == 1:
        (only,) = results
        return {**only.measurement.metrics(), **own_metrics(only, runtime, bs),
                **session_metrics(results), **isolation}
    metrics: dict[str, float] = {}
    for result in results:
        own = own_metrics(result, runtime, bs)
        device_metrics = {**result.measurement.metrics(), **own}
        for key in (*PER_DEVICE_METRICS, *own):
            metrics[f"{key}_dev{result.device}"] = device_metrics[key]
    pooled = np.concatenate([r.measurement.compute_ms for r in results])
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
        "benchmark_overlap": overlap(results),
    })
    metrics.update(session_metrics(results))
    metrics.update(isolation)
    if all(f"{runtime}_throughput_fps_dev{r.device}" in metrics for r in results):
        metrics[f"{runtime}_throughput_fps"] = sum(
            metrics[f"{runtime}_throughput_fps_dev{r.device}"] for r in results)
    return metrics
