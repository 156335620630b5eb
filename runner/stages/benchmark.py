"""benchmark: pure-inference throughput and latency at `bs`, measured as ais_bench does, on
every device of `chip.devices` at once (`runner.device_benchmark`)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import device_benchmark, device_lock, environment
from runner.backends import SessionSettings, backend_code, backend_for
from runner.cache import StageOutput, atomic_write_text
from runner.config import BenchmarkConfig, RunConfig
from runner.device_benchmark import BatchSpec
from runner.errors import MeasurementError
from runner.measurement import judge, method_description
from runner.settings import runtime_only

NEEDS = ("model",)
GIVES = ("benchmark_json",)
CODE = ("runner.measurement", "runner.device_lock", "runner.device_pool",
        "runner.device_benchmark")
MEASURES = True  # a figure: re-measured unless reuse is asked for (runner.pipeline)
RESULT_FILE = "benchmark.json"
TIMED_SPAN = "one synchronous session.run on a preallocated host batch (no preprocessing)"
VERDICT_RULE = ("VALID when every repeat's windows were stable (benchmark.max_spread), no timed "
                "run was capped (benchmark.max_duration_s), the repeats' throughput_cv is within "
                "benchmark.max_cv, and other work used at most benchmark.busy_threshold of the "
                "device before and during timing; INVALID otherwise, with every failed rule named")


@dataclass(frozen=True)
class Settings:
    """The test settings (`method`, the input) apart from the system under test (`session`)."""

    batch: BatchSpec  # bs, input size, random or zero input and its seed
    method: BenchmarkConfig  # warm-up, stopping rule, stability, repeats
    session: SessionSettings
    chip: str
    devices: tuple[int, ...]  # measured at once
    backend_code: str
    host: str  # a figure is a fact about the machine it was measured on
    lock_dir: str = runtime_only("")  # device locks: one timed job per device

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        return cls(BatchSpec(cfg.bs, cfg.model.input_size, cfg.model.preprocess.layout,
                             cfg.benchmark.input, cfg.seed, cfg.model.preprocess.on_device),
                   copy.deepcopy(cfg.benchmark), SessionSettings.from_config(cfg),
                   cfg.chip.name, tuple(cfg.chip.devices), backend_code(cfg.chip.runtime),
                   environment.host_id(), lock_dir=str(cfg.cache_dir))


def check(settings: Settings) -> None:
    backend_for(settings.session.runtime).check(settings.session, settings.devices)


def device_report(result: device_benchmark.DeviceBenchmark) -> dict[str, Any]:
    measured = result.measurement
    return {
        "device": result.device,
        "session": result.session,
        "warmup": {"iterations": measured.warmup_iters, "seconds": measured.warmup_s},
        "repeats": [run.summary() for run in measured.runs],
        "compute_ms": [run.compute_ms for run in measured.runs],
        "runtime_compute_ms": result.own_compute_ms,
        "untimed_calls_after": result.untimed_calls_after,
        # one per repeat when each ran in a fresh process (benchmark.isolate_repeats)
        "repeat_process_ids": [r.process_id for r in result.repeats] or [result.process_id],
    }


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    session, runtime = settings.session, settings.session.runtime
    # the locks keep other jobs (a parallel sweep) off these devices while they are timed
    with device_lock.guard(Path(settings.lock_dir), settings.chip, session.device_type,
                           list(settings.devices), settings.method.busy_threshold) as guard:
        results = device_benchmark.benchmark(settings.devices, session, inputs["model"],
                                             settings.batch, settings.method)
    metrics = device_benchmark.aggregate_metrics(results, runtime, settings.batch.bs)
    if guard.busy.busy_pct is not None:
        metrics["benchmark_device_busy_pct"] = guard.busy.busy_pct
    if guard.busy_during_pct is not None:
        metrics["benchmark_device_busy_during_pct"] = guard.busy_during_pct
    if guard.stolen_during_pct is not None:  # the hypervisor's part of busy_during (VM steal)
        metrics["benchmark_cpu_stolen_during_pct"] = guard.stolen_during_pct
    if len(results) == 1:  # the spread of the repeats, for error bars
        repeats = [run.throughput_fps for run in results[0].measurement.runs]
        metrics["throughput_fps_min"], metrics["throughput_fps_max"] = min(repeats), max(repeats)
    verdict = judge({r.device: r.measurement for r in results}, settings.method,
                    guard.busy.busy_pct, guard.busy_during_pct, guard.stolen_before_pct,
                    guard.stolen_during_pct)
    metrics["benchmark_valid"] = float(verdict.valid)
    method = method_description(settings.method, TIMED_SPAN)
    if len(results) > 1:
        method["devices"] = device_benchmark.AGGREGATE_METHOD
    if any(r.own_compute_ms for r in results):
        method[f"{runtime}_throughput_fps"] = (
            "1000 * bs / mean of the runtime's own execute times of the timed calls")
    facts = environment.ChipFacts.of_session(settings.chip, session, settings.devices)
    method["verdict"] = VERDICT_RULE
    report: dict[str, Any] = {"metrics": metrics, "method": method,
                              "verdict": {"verdict": verdict.word, "reasons": verdict.reasons},
                              "environment": environment.capture(facts),
                              "device_guard": guard.report()}
    if len(results) == 1:
        report.update(device_report(results[0]))
    else:
        report["devices"] = [device_report(r) for r in results]
    atomic_write_text(out_dir / RESULT_FILE, json.dumps(report, indent=2))
    return StageOutput(
        artifacts={"benchmark_json": RESULT_FILE},
        metrics=metrics,
        info={"verdict": {"verdict": verdict.word, "reasons": verdict.reasons},
              "method": method, "stable": all(r.measurement.stable for r in results),
              "trials": [r.measurement.trials for r in results],
              "capped": any(r.measurement.capped for r in results),
              "device_warnings": guard.report()["warnings"]},
    )


def accept(settings: Settings, output: StageOutput) -> None:
    """After the figures are recorded: with benchmark.require_valid, an INVALID one fails the
    run (a reused one included: its verdict travels with it)."""
    verdict = output.info.get("verdict", {})
    if settings.method.require_valid and verdict.get("verdict") == "INVALID":
        raise MeasurementError(
            f"benchmark INVALID ({'; '.join(verdict['reasons'])}) and benchmark.require_valid="
            "true: measure on a quiet machine (or relax the rule named), figures are recorded"
        )
