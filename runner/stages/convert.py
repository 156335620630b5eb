"""convert: ONNX -> the chip's runnable model (ONNX Runtime-optimized graph, Ascend OM, ...).

What the converted model depends on differs per runtime (ONNX Runtime's graph not on bs, an
Ascend OM on bs and soc_version), so each backend module defines its own convert settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.backends import SessionSettings, backend_code, backend_for
from runner.cache import StageOutput
from runner.config import RunConfig
from runner.models import onnx_file
from runner.settings import runtime_only

NEEDS = ("onnx",)
GIVES = ("model",)
CODE: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    runtime: str
    backend: Any  # the backend's own frozen ConvertSettings
    backend_code: str
    # read by `check` only, before any work: what the chip's sessions will be asked to do
    session: SessionSettings = runtime_only()
    devices: tuple[int, ...] = runtime_only()

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        runtime = cfg.chip.runtime
        return cls(runtime, backend_for(runtime).convert_settings(cfg),
                   backend_code(runtime), SessionSettings.from_config(cfg),
                   tuple(cfg.chip.devices))


def check(settings: Settings) -> None:
    backend_for(settings.runtime).check(settings.session, settings.devices)


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    onnx_file.check(inputs["onnx"])  # a damaged file fails here, named, not in the runtime
    model_path, facts = backend_for(settings.runtime).convert(inputs["onnx"], out_dir,
                                                               settings.backend)
    # int8: how many images the quantization was calibrated on (num_images, clipped)
    metrics = ({"calibration_images": float(facts["calibration_images"])}
               if "calibration_images" in facts else {})
    artifacts = {"model": model_path.name}
    if "aipp_cfg" in facts:  # Ascend, model.preprocess.on_device=true: logged with the run
        artifacts["aipp_cfg"] = facts["aipp_cfg"]
    return StageOutput(artifacts=artifacts, metrics=metrics,
                       info={"runtime": settings.runtime, **facts})
