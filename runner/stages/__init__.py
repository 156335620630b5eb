"""The stages of an offline-inference guide, one module each.

Every stage module defines:
  NEEDS       artifact names it reads (made by earlier stages)
  GIVES       artifact names it writes
  CODE        other runner modules whose source is part of its cache key
  key_config  cfg -> the settings its output depends on (part of its cache key)
  run         (cfg, inputs, out_dir) -> StageOutput, writing its files into out_dir
"""

from __future__ import annotations

import importlib
from types import ModuleType

from runner.config import STAGE_NAMES


def stage_module(name: str) -> ModuleType:
    if name not in STAGE_NAMES:
        raise KeyError(name)
    return importlib.import_module(f"runner.stages.{name}")
