"""benchmark: pure-inference throughput and latency at `bs`, measured as ais_bench does, on
every device of `chip.devices` at once (`runner.devices`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from runner import device_lock, devices, environment
from runner.backends import Session, backend_for
from runner.cache import StageOutput, atomic_write_text, source_digest
from runner.config import RunConfig
from runner.measurement import Measurement, measure, method_description

NEEDS = ("model",)
GIVES = ("benchmark_json",)
CODE = ("runner.measurement", "runner.device_lock", "runner.devices")
RESULT_FILE = "benchmark.json"
TIMED_SPAN = "one synchronous session.run on a preallocated host batch (no preprocessing)"


def key_config(cfg: RunConfig) -> dict[str, Any]:
    backend = backend_for(cfg.chip)
    return {
        "bs": cfg.bs,
        "chip": asdict(cfg.chip),
        "settings": asdict(cfg.benchmark),
        "seed": cfg.seed,
        "backend_code": source_digest(backend.__name__),
        "host": environment.host_id(),
    }


def input_batch(cfg: RunConfig) -> np.ndarray:
    shape = (cfg.bs, 3, cfg.model.input_size, cfg.model.input_size)
    if cfg.benchmark.input == "zero":
        return np.zeros(shape, dtype=np.float32)
    return np.random.default_rng(cfg.seed).standard_normal(shape, dtype=np.float32)


def measure_session(session: Session, cfg: RunConfig) -> Measurement:
    """The timed part: `cfg.benchmark`'s method around `session.run` on a prepared batch."""
    batch = input_batch(cfg)
    return measure(lambda: session.run(batch), cfg.benchmark, cfg.bs)


def device_report(result: devices.DeviceBenchmark) -> dict[str, Any]:
    measured = result.measurement
    return {
        "device": result.device,
        "session": result.session,
        "warmup": {"iterations": measured.warmup_iters, "seconds": measured.warmup_s},
        "repeats": [run.summary() for run in measured.runs],
        "compute_ms": [run.compute_ms for run in measured.runs],
        "runtime_compute_ms": result.own_compute_ms,
        "untimed_calls_after": result.untimed_calls_after,
    }


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    # the locks keep other jobs (a parallel sweep) off these devices while they are timed
    with device_lock.guard(cfg.cache_dir, cfg.chip, cfg.chip.devices,
                           cfg.benchmark.busy_threshold) as guard:
        results = devices.benchmark(cfg, inputs["model"], input_batch)
    metrics = devices.aggregate_metrics(results, cfg.chip.runtime, cfg.bs)
    if guard.busy.busy_pct is not None:
        metrics["benchmark_device_busy_pct"] = guard.busy.busy_pct
    method = method_description(cfg.benchmark, TIMED_SPAN)
    if len(results) > 1:
        method["devices"] = devices.AGGREGATE_METHOD
    if any(r.own_compute_ms for r in results):
        method[f"{cfg.chip.runtime}_throughput_fps"] = (
            "1000 * bs / mean of the runtime's own execute times of the timed calls")
    report: dict[str, Any] = {"metrics": metrics, "method": method,
                              "environment": environment.capture(cfg.chip),
                              "device_guard": guard.report()}
    if len(results) == 1:
        report.update(device_report(results[0]))
    else:
        report["devices"] = [device_report(r) for r in results]
    atomic_write_text(out_dir / RESULT_FILE, json.dumps(report, indent=2))
    return StageOutput(
        artifacts={"benchmark_json": RESULT_FILE},
        metrics=metrics,
        info={"method": method, "stable": all(r.measurement.stable for r in results),
              "trials": [r.measurement.trials for r in results],
              "capped": any(r.measurement.capped for r in results),
              "device_warnings": guard.busy.warnings},
    )
