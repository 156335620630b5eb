"""Plan the stages named by `cfg.stage.stages`, then run them in order, each through the cache.

The pipeline is data: `plan` turns the composed config into one `PlannedStage` per stage, each
with the frozen settings its module declares, and runs every check that needs no work, before
any stage runs and before an MLflow run exists. `run` then computes each stage's key (its code,
its settings, the digests of the artifacts it reads) and reuses a finished cache entry or
computes it, so a second run at another batch size reuses export and preprocess, and a killed
run resumes from its last finished entry.

A measurement is not an artifact: a stage that `MEASURES` (benchmark, e2e) is computed anew on
every run unless `cache.reuse_measurements=true`, and a reused one says so (`StageRecord.reused`
with the provenance of the run that measured it). Every entry records its provenance: when,
on which host, at which commit and in which MLflow run it was made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from runner import environment, memory
from runner.cache import CacheEntry, StageOutput, digest_json, run_cached, source_digest
from runner.config import RunConfig
from runner.errors import ConfigError
from runner.settings import key_settings
from runner.stages import producers, stage_module

log = logging.getLogger("runner")


@dataclass(frozen=True)
class PlannedStage:
    name: str
    module: ModuleType
    settings: Any  # the module's frozen Settings
    force: bool  # recompute even when a finished entry exists (cache.force, or a measurement)

    @property
    def measures(self) -> bool:
        return bool(getattr(self.module, "MEASURES", False))


@dataclass
class StageRecord:
    name: str
    entry: CacheEntry
    seconds: float
    measures: bool = False  # its figures are measurements (benchmark, e2e)
    # peak RSS of the process tree (runner.memory) during this stage, and since the run began
    peak_rss_mib: float | None = None
    peak_rss_mib_run: float | None = None

    @property
    def reused(self) -> bool:
        """A measurement taken by an earlier run, not now."""
        return self.measures and self.entry.hit

    @property
    def provenance(self) -> dict[str, Any]:
        return self.entry.output.provenance

    def memory_metrics(self) -> dict[str, float]:
        """peak_rss_mib_<stage> and the run's peak so far, peak_rss_mib (none where unsampled).
        Measured by this run whether the stage was a cache hit or not: never cached."""
        if self.peak_rss_mib is None or self.peak_rss_mib_run is None:
            return {}
        return {f"peak_rss_mib_{self.name}": self.peak_rss_mib,
                "peak_rss_mib": self.peak_rss_mib_run}

    def reuse_note(self) -> str:
        """'reused: measured <time> in run <id>' for a reused measurement, else ''."""
        if not self.reused:
            return ""
        made = self.provenance
        return (f"reused: measured {made.get('made_at', 'at an unknown time')} in run "
                f"{made.get('run_id') or 'unknown'} on {made.get('host', 'an unknown host')}")


@dataclass
class PipelineResult:
    stages: list[StageRecord] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for record in self.stages:
            merged.update(record.entry.output.metrics)
            merged[f"time_{record.name}_s"] = record.seconds
            merged.update(record.memory_metrics())
        return merged


def check_order(stages: list[str]) -> None:
    """Every artifact a stage reads must be made by a stage listed before it."""
    made: set[str] = set()
    for name in stages:
        module = stage_module(name)
        for needed in module.NEEDS:
            if needed not in made:
                producer = producers().get(needed, "?")
                raise ConfigError(
                    f"stage.stages={stages}: {name} needs {needed!r}, made by {producer}; "
                    f"list {producer} before {name}"
                )
        made.update(module.GIVES)


def plan(cfg: RunConfig) -> list[PlannedStage]:
    """The run's stages with their settings, every check that needs no work done."""
    check_order(cfg.stage.stages)
    planned = []
    for name in cfg.stage.stages:
        module = stage_module(name)
        force = name in cfg.cache.force or "all" in cfg.cache.force
        if getattr(module, "MEASURES", False) and not cfg.cache.reuse_measurements:
            force = True  # a figure is measured now, not copied from another run
        planned.append(PlannedStage(name, module, module.Settings.from_config(cfg), force))
    for stage in planned:
        check = getattr(stage.module, "check", None)
        if check is not None:
            check(stage.settings)
    return planned


def stage_key(stage: PlannedStage, input_digests: dict[str, str]) -> str:
    module = stage.module
    code = {m: source_digest(m) for m in (module.__name__, *module.CODE, "runner.cache")}
    return digest_json({"stage": stage.name, "code": code,
                        "settings": key_settings(stage.settings), "inputs": input_digests})[:24]


def provenance(run_id: str | None) -> dict[str, Any]:
    """Where and when an entry is made: recorded with it, shown wherever it is reused."""
    return {"made_at": datetime.now(UTC).isoformat(timespec="seconds"), "run_id": run_id,
            "host": environment.host_id(), "git_commit": environment.git_commit()}


def run(planned: list[PlannedStage], cache_dir: Path,
        on_stage: Callable[[StageRecord], None] | None = None,
        run_id: str | None = None, verify: str = "stat") -> PipelineResult:
    """The planned stages in order; `run_id` is the MLflow run they are made in, if any;
    `verify` how a cache hit's files are checked (cache.verify)."""
    produced: dict[str, CacheEntry] = {}  # artifact name -> the entry holding it
    result = PipelineResult()
    with memory.PeakSampler() as peak:
        for stage in planned:
            started = time.perf_counter()
            inputs = {n: produced[n] for n in stage.module.NEEDS}
            key = stage_key(stage, {n: e.digest(n) for n, e in inputs.items()})

            def compute(out_dir: Path, stage: PlannedStage = stage,
                        inputs: dict[str, CacheEntry] = inputs) -> StageOutput:
                paths = {n: e.artifact(n) for n, e in inputs.items()}
                output: StageOutput = stage.module.run(stage.settings, paths, out_dir)
                output.provenance = provenance(run_id)
                return output

            log.info("%s: key %s", stage.name, key)
            entry = run_cached(cache_dir, stage.name, key, compute, force=stage.force,
                               verify=verify)
            record = StageRecord(stage.name, entry, time.perf_counter() - started, stage.measures,
                                 peak.mark(), peak.peak_mib)
            log.info("%s: %s in %.2f s (%s)", stage.name, "cache hit" if entry.hit else "done",
                     record.seconds, entry.path)
            if record.reused:
                log.warning("%s: %s (cache.reuse_measurements=true)", stage.name,
                            record.reuse_note())
            for artifact in stage.module.GIVES:
                produced[artifact] = entry
            result.stages.append(record)
            if on_stage is not None:
                on_stage(record)
            accept = getattr(stage.module, "accept", None)
            if accept is not None:  # after the output is recorded: a refusal keeps the figures
                accept(stage.settings, entry.output)
    return result
