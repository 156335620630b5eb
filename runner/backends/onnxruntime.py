"""ONNX Runtime: the CPU default, and CUDA where onnxruntime-gpu is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from runner.config import ChipConfig, RunConfig
from runner.errors import ConfigError, ToolMissingError

OPTIMIZED_MODEL = "model.ort.onnx"


def _options(chip: ChipConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if chip.threads:
        options.intra_op_num_threads = chip.threads
    options.log_severity_level = 3
    return options


def check_chip(chip: ChipConfig) -> None:
    """Settings this runtime would silently ignore are refused: the run must be what it says."""
    if chip.precision != "fp32":
        raise ConfigError(
            f"chip.precision={chip.precision} is not supported by runtime onnxruntime (it runs "
            "the fp32 ONNX as exported): use chip.precision=fp32, or chip=cuda / chip=torch_cpu "
            "(PyTorch) for fp16"
        )
    if chip.channels_last:
        raise ConfigError(
            "chip.channels_last=true is not supported by runtime onnxruntime (it picks layouts "
            "itself): remove it, or use chip=cuda / chip=torch_cpu (PyTorch)"
        )
    on_cuda = any(p != "CPUExecutionProvider" for p in chip.providers)
    if (chip.device_type == "cuda") != on_cuda:
        raise ConfigError(
            f"chip.device_type={chip.device_type} does not match chip.providers="
            f"{chip.providers}: cuda needs a GPU provider (CUDAExecutionProvider), cpu only "
            "CPUExecutionProvider"
        )


def _providers(chip: ChipConfig, device: int) -> list[Any]:
    available = ort.get_available_providers()
    missing = [p for p in chip.providers if p not in available]
    if missing:
        raise ToolMissingError(
            f"ONNX Runtime provider(s) {', '.join(missing)} not available (have "
            f"{', '.join(available)}): for CUDA install onnxruntime-gpu, or use chip=cpu"
        )
    return [
        (p, {"device_id": device}) if p != "CPUExecutionProvider" else p for p in chip.providers
    ]


def convert_key(cfg: RunConfig) -> dict[str, Any]:
    # the optimized graph is batch-size independent (dynamic batch axis is kept)
    chip = cfg.chip
    check_chip(chip)
    return {"runtime": "onnxruntime", "ort": ort.__version__, "providers": chip.providers,
            "precision": chip.precision}


def convert(onnx_path: Path, out_dir: Path, cfg: RunConfig) -> tuple[Path, dict[str, Any]]:
    """Save ONNX Runtime's offline-optimized graph (constant folding, node fusions).

    ORT_ENABLE_EXTENDED, not ALL: layout optimizations of the ALL level are specific to the
    machine and ONNX Runtime warns against saving them; they are applied again when loading.
    """
    chip = cfg.chip
    target = out_dir / OPTIMIZED_MODEL
    options = _options(chip)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(onnx_path), options, providers=_providers(chip, chip.devices[0]))
    return target, {"onnxruntime": ort.__version__, "optimization": "ORT_ENABLE_EXTENDED"}


class OrtSession:
    def __init__(self, model_path: Path, chip: ChipConfig, device: int) -> None:
        check_chip(chip)
        self._session = ort.InferenceSession(
            str(model_path), _options(chip), providers=_providers(chip, device)
        )
        requested = [p for p in chip.providers if p != "CPUExecutionProvider"]
        if requested and requested[0] not in self._session.get_providers():
            # ONNX Runtime falls back to the CPU when a GPU provider fails to load
            raise ToolMissingError(
                f"ONNX Runtime could not load {requested[0]} on device {device} (the session "
                f"has {', '.join(self._session.get_providers())}): check the CUDA and cuDNN "
                "libraries onnxruntime-gpu needs, or use chip=cuda (PyTorch)"
            )
        self._input = self._session.get_inputs()[0].name
        self._device = device
        self._chip = chip

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]

    def describe(self) -> dict[str, Any]:
        options = self._session.get_session_options()
        return {
            "runtime": f"onnxruntime {ort.__version__}",
            "providers": self._session.get_providers(),
            "device": self._device,
            "intra_op_threads": options.intra_op_num_threads or "runtime default",
            "timed_span": "InferenceSession.run: host input in, host output out",
        }

    def own_compute_ms(self) -> list[float]:
        return []  # ONNX Runtime keeps no per-call times unless profiling is on


def open_session(model_path: Path, chip: ChipConfig, device: int) -> OrtSession:
    return OrtSession(model_path, chip, device)
