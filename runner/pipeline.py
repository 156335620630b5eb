"""Plan the stages named by `cfg.stage.stages`, then run them in order, each through the cache.

The pipeline is data: `plan` turns the composed config into one `PlannedStage` per stage, each
with the frozen settings its module declares, and runs every check that needs no work, before
any stage runs and before an MLflow run exists. `run` then computes each stage's key (its code,
its settings, the digests of the artifacts it reads) and reuses a finished cache entry or
computes it, so a second run at another batch size reuses export and preprocess, and a killed
run resumes from its last finished entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from runner.cache import CacheEntry, digest_json, run_cached, source_digest
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
    force: bool  # recompute even when a finished entry exists (cache.force)


@dataclass
class StageRecord:
    name: str
    entry: CacheEntry
    seconds: float


@dataclass
class PipelineResult:
    stages: list[StageRecord] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for record in self.stages:
            merged.update(record.entry.output.metrics)
            merged[f"time_{record.name}_s"] = record.seconds
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


def run(planned: list[PlannedStage], cache_dir: Path,
        on_stage: Callable[[StageRecord], None] | None = None) -> PipelineResult:
    produced: dict[str, CacheEntry] = {}  # artifact name -> the entry holding it
    result = PipelineResult()
    for stage in planned:
        started = time.perf_counter()
        inputs = {n: produced[n] for n in stage.module.NEEDS}
        key = stage_key(stage, {n: e.digest(n) for n, e in inputs.items()})

        def compute(out_dir: Path, stage: PlannedStage = stage,
                    inputs: dict[str, CacheEntry] = inputs) -> Any:
            paths = {n: e.artifact(n) for n, e in inputs.items()}
            return stage.module.run(stage.settings, paths, out_dir)

        log.info("%s: key %s", stage.name, key)
        entry = run_cached(cache_dir, stage.name, key, compute, force=stage.force)
        record = StageRecord(stage.name, entry, time.perf_counter() - started)
        log.info("%s: %s in %.2f s (%s)", stage.name, "cache hit" if entry.hit else "done",
                 record.seconds, entry.path)
        for artifact in stage.module.GIVES:
            produced[artifact] = entry
        result.stages.append(record)
        if on_stage is not None:
            on_stage(record)
    return result
