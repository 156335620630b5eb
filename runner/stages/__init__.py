"""The stages of an offline-inference guide, one module each.

Every stage module defines:
  NEEDS     artifact names it reads (made by earlier stages)
  GIVES     artifact names it writes
  CODE      other runner modules whose source is part of its cache key
  Settings  a frozen dataclass with `Settings.from_config(cfg)`: everything the stage reads.
            Its fields, with the stage's code and the digests of its inputs, ARE the cache key,
            so a setting the stage reads is in its key by construction. A field that cannot
            change the output (a worker count, a folder for downloads) is declared with
            `runner.settings.runtime_only()`, which says so where the field is defined.
  check     optional, (settings) -> None: what can fail without doing any work; every stage's
            check runs before the first stage and before an MLflow run is created
  run       (settings, inputs, out_dir) -> StageOutput, writing its files into out_dir
  MEASURES  optional, True for a stage whose output is a measurement (benchmark, e2e): it is
            computed anew on every run unless cache.reuse_measurements=true
  accept    optional, (settings, output) -> None: raises to fail the run after the output is
            recorded (benchmark.require_valid)

`from_config` reads files (a label file, a checkpoint's hash) but never writes or computes
anything: a key costs no work and has no side effects.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType

from runner.config import STAGE_NAMES


def stage_module(name: str) -> ModuleType:
    if name not in STAGE_NAMES:
        raise KeyError(name)
    return importlib.import_module(f"runner.stages.{name}")


@cache
def producers() -> dict[str, str]:
    """Which stage makes each artifact (the first in pipeline order, where two can)."""
    made: dict[str, str] = {}
    for name in STAGE_NAMES:
        for artifact in stage_module(name).GIVES:
            made.setdefault(artifact, name)
    return made
