"""benchmark: pure-inference throughput and latency at `bs`, measured as ais_bench does."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from runner import environment
from runner.backends import backend_for
from runner.cache import StageOutput, atomic_write_text, source_digest
from runner.config import RunConfig
from runner.measurement import measure, method_description

NEEDS = ("model",)
GIVES = ("benchmark_json",)
CODE = ("runner.measurement",)
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


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    session = backend_for(cfg.chip).open_session(inputs["model"], cfg.chip, cfg.chip.devices[0])
    batch = input_batch(cfg)
    result = measure(lambda: session.run(batch), cfg.benchmark, cfg.bs)
    report = {
        "metrics": result.metrics(),
        "method": method_description(cfg.benchmark, TIMED_SPAN),
        "session": session.describe(),
        "environment": environment.capture(cfg.chip),
        "warmup": {"iterations": result.warmup_iters, "seconds": result.warmup_s},
        "trials": result.trials,
        "window_fps": result.window_fps,
        "compute_ms": result.compute_ms,
    }
    atomic_write_text(out_dir / RESULT_FILE, json.dumps(report, indent=2))
    return StageOutput(
        artifacts={"benchmark_json": RESULT_FILE},
        metrics=result.metrics(),
        info={"method": report["method"], "stable": result.stable, "trials": result.trials},
    )
