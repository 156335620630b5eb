"""convert: ONNX -> the chip's runnable model (ONNX Runtime-optimized graph, Ascend OM, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.backends import backend_for
from runner.cache import StageOutput, source_digest
from runner.config import RunConfig
from runner.models import onnx_file

NEEDS = ("onnx",)
GIVES = ("model",)
CODE: tuple[str, ...] = ()


def key_config(cfg: RunConfig) -> dict[str, Any]:
    backend = backend_for(cfg.chip)
    return {**backend.convert_key(cfg), "code": source_digest(backend.__name__)}


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    onnx_file.check(inputs["onnx"])  # a damaged file fails here, named, not in the runtime
    backend = backend_for(cfg.chip)
    model_path, facts = backend.convert(inputs["onnx"], out_dir, cfg)
    return StageOutput(artifacts={"model": model_path.name},
                       info={"runtime": cfg.chip.runtime, **facts})
