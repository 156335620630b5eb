"""Run the stages named by `cfg.stage.stages`, in order, each through the content cache.

The pipeline is the composed config: a stage's cache key is made of its code, the settings its
`key_config` names, and the digests of the artifacts it reads, so a second run at another batch
size reuses export and preprocess, and a killed run resumes from its last finished entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runner.cache import CacheEntry, digest_json, run_cached, source_digest
from runner.config import RunConfig
from runner.errors import ConfigError
from runner.stages import stage_module

log = logging.getLogger("runner")


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
    made: dict[str, str] = {}
    for name in stages:
        module = stage_module(name)
        for needed in module.NEEDS:
            if needed not in made:
                producer = next(
                    (s for s in ("export", "convert", "preprocess", "infer", "evaluate")
                     if needed in stage_module(s).GIVES), "?")
                raise ConfigError(
                    f"stage.stages={stages}: {name} needs {needed!r}, made by {producer}; "
                    f"list {producer} before {name}"
                )
        for given in module.GIVES:
            made[given] = name


def stage_key(cfg: RunConfig, name: str, input_digests: dict[str, str]) -> str:
    module = stage_module(name)
    code = {m: source_digest(m) for m in (module.__name__, *module.CODE, "runner.cache")}
    return digest_json(
        {"stage": name, "code": code, "config": module.key_config(cfg), "inputs": input_digests}
    )[:24]


def run(
    cfg: RunConfig, on_stage: Callable[[StageRecord], None] | None = None
) -> PipelineResult:
    check_order(cfg.stage.stages)
    produced: dict[str, CacheEntry] = {}  # artifact name -> the entry holding it
    result = PipelineResult()
    for name in cfg.stage.stages:
        module = stage_module(name)
        started = time.perf_counter()
        inputs = {n: produced[n] for n in module.NEEDS}
        key = stage_key(cfg, name, {n: e.digest(n) for n, e in inputs.items()})
        force = name in cfg.cache.force or "all" in cfg.cache.force

        def compute(out_dir, module=module, inputs=inputs):
            paths = {n: e.artifact(n) for n, e in inputs.items()}
            return module.run(cfg, paths, out_dir)

        log.info("%s: key %s", name, key)
        entry = run_cached(cfg.cache_dir, name, key, compute, force=force, verify=cfg.cache.verify)
        record = StageRecord(name, entry, time.perf_counter() - started)
        log.info("%s: %s in %.2f s (%s)", name, "cache hit" if entry.hit else "done",
                 record.seconds, entry.path)
        for artifact in module.GIVES:
            produced[artifact] = entry
        result.stages.append(record)
        if on_stage is not None:
            on_stage(record)
    return result
