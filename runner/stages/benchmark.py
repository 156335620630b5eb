"""benchmark: pure-inference throughput and latency at `bs`, measured as ais_bench does."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from runner import device_lock, environment
from runner.backends import Session, backend_for
from runner.cache import StageOutput, atomic_write_text, source_digest
from runner.config import RunConfig
from runner.measurement import Measurement, measure, method_description

NEEDS = ("model",)
GIVES = ("benchmark_json",)
CODE = ("runner.measurement", "runner.device_lock")
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


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    device = cfg.chip.devices[0]
    session = backend_for(cfg.chip).open_session(inputs["model"], cfg.chip, device)
    with device_lock.guard(cfg.cache_dir, cfg.chip, device, cfg.benchmark.busy_threshold) as guard:
        result = measure_session(session, cfg)
    metrics = result.metrics()
    if guard.busy.busy_pct is not None:
        metrics["benchmark_device_busy_pct"] = guard.busy.busy_pct
    report = {
        "metrics": metrics,
        "method": method_description(cfg.benchmark, TIMED_SPAN),
        "session": session.describe(),
        "environment": environment.capture(cfg.chip),
        "device": guard.report(),
        "warmup": {"iterations": result.warmup_iters, "seconds": result.warmup_s},
        "repeats": [run.summary() for run in result.runs],
        "compute_ms": [run.compute_ms for run in result.runs],
    }
    atomic_write_text(out_dir / RESULT_FILE, json.dumps(report, indent=2))
    return StageOutput(
        artifacts={"benchmark_json": RESULT_FILE},
        metrics=metrics,
        info={"method": report["method"], "stable": result.stable, "trials": result.trials,
              "capped": result.capped, "device_warnings": guard.busy.warnings},
    )
