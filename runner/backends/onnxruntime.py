"""ONNX Runtime: the CPU default, and the CUDA / TensorRT execution providers where
onnxruntime-gpu is installed (chip=cuda_ort, chip=tensorrt_ort)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runner import environment, quantize
from runner.backends import SessionSettings
from runner.cache import source_digest
from runner.config import RunConfig
from runner.errors import ConfigError, ToolMissingError
from runner.settings import runtime_only

if TYPE_CHECKING:
    import onnxruntime as ort

OPTIMIZED_MODEL = "model.ort.onnx"


@dataclass(frozen=True)
class ConvertSettings:
    """The optimized graph depends on the providers and the ONNX Runtime release, not on bs
    (the dynamic batch axis is kept)."""

    providers: tuple[str, ...]
    onnxruntime: str
    # chip.precision=int8: the static quantization's calibration (None: the fp32 graph)
    calibration: quantize.Calibration | None = None
    quantize_code: str = ""  # runner/quantize.py's digest, where it runs
    device: int = runtime_only(0)  # the provider's device while optimizing
    threads: int = runtime_only(0)


def convert_settings(cfg: RunConfig) -> ConvertSettings:
    calibration = quantize.Calibration.from_config(cfg)
    return ConvertSettings(tuple(cfg.chip.providers), _ort_version(), calibration,
                           source_digest("runner.quantize") if calibration else "",
                           cfg.chip.devices[0], cfg.chip.threads)


def _ort_version() -> str:
    versions = environment.library_versions()
    return versions.get("onnxruntime-gpu") or versions.get("onnxruntime") or "unknown"


def check(session: SessionSettings, devices: tuple[int, ...]) -> None:
    """Settings this runtime would silently ignore are refused: the run must be what it says."""
    if session.precision not in ("fp32", "int8"):
        raise ConfigError(
            f"chip.precision={session.precision} is not supported by runtime onnxruntime (it "
            "runs the fp32 ONNX as exported, or its int8 quantization on the CPU): use "
            "chip.precision=fp32 or int8, or chip=cuda / chip=torch_cpu (PyTorch) for fp16 and "
            "bf16"
        )
    if session.channels_last:
        raise ConfigError(
            "chip.channels_last=true is not supported by runtime onnxruntime (it picks layouts "
            "itself): remove it, or use chip=cuda / chip=torch_cpu (PyTorch)"
        )
    on_cuda = any(p != "CPUExecutionProvider" for p in session.providers)
    if session.precision == "int8" and on_cuda:
        raise ConfigError(
            f"chip.precision=int8 is ONNX Runtime's static quantization on the CPU, not with "
            f"chip.providers={list(session.providers)}: use chip=cpu for int8, or "
            "chip.precision=fp32"
        )
    if (session.device_type == "cuda") != on_cuda:
        raise ConfigError(
            f"chip.device_type={session.device_type} does not match chip.providers="
            f"{list(session.providers)}: cuda needs a GPU provider (CUDAExecutionProvider), cpu "
            "only CPUExecutionProvider"
        )
    if on_cuda:
        # before any work: a CPU-only onnxruntime lists no GPU provider at all
        _providers(session.providers, devices[0])


def _options(threads: int) -> ort.SessionOptions:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return options


def _providers(providers: tuple[str, ...], device: int) -> list[Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise ToolMissingError(
            f"ONNX Runtime {ort.__version__} has no {', '.join(missing)} (it has "
            f"{', '.join(available)}): install onnxruntime-gpu in place of onnxruntime (TensorRT "
            "also needs TensorRT's libraries), or use chip=cuda (PyTorch) or chip=cpu"
        )
    return [(p, {"device_id": device}) if p != "CPUExecutionProvider" else p for p in providers]


def convert(onnx_path: Path, out_dir: Path, settings: ConvertSettings,
            ) -> tuple[Path, dict[str, Any]]:
    """Save ONNX Runtime's offline-optimized graph (constant folding, node fusions), or for
    chip.precision=int8 the statically quantized QDQ model (runner/quantize.py), which ONNX
    Runtime fuses into its int8 kernels when a session opens it.

    ORT_ENABLE_EXTENDED, not ALL: layout optimizations of the ALL level are specific to the
    machine and ONNX Runtime warns against saving them; they are applied again when loading.
    """
    import onnxruntime as ort

    if settings.calibration is not None:
        return quantize.quantize(onnx_path, out_dir, settings.calibration)
    target = out_dir / OPTIMIZED_MODEL
    options = _options(settings.threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(onnx_path), options,
                         providers=_providers(settings.providers, settings.device))
    return target, {"onnxruntime": ort.__version__, "optimization": "ORT_ENABLE_EXTENDED"}


class OrtSession:
    def __init__(self, model_path: Path, settings: SessionSettings, device: int) -> None:
        import onnxruntime as ort

        check(settings, (device,))
        self._session = ort.InferenceSession(
            str(model_path), _options(settings.threads),
            providers=_providers(settings.providers, device)
        )
        requested = [p for p in settings.providers if p != "CPUExecutionProvider"]
        if requested and requested[0] not in self._session.get_providers():
            # ONNX Runtime falls back to the next provider when one fails to load (TensorRT
            # without its libraries, CUDA without cuDNN): the run would not be what it says
            raise ToolMissingError(
                f"ONNX Runtime could not load {requested[0]} on device {device} (the session "
                f"has {', '.join(self._session.get_providers())}): check the CUDA, cuDNN (and "
                "for TensorRT, TensorRT) libraries onnxruntime-gpu needs, or use chip=cuda "
                "(PyTorch)"
            )
        self._input = self._session.get_inputs()[0].name
        self._device = device
        self._version = ort.__version__

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]

    def describe(self) -> dict[str, Any]:
        options = self._session.get_session_options()
        return {
            "runtime": f"onnxruntime {self._version}",
            "providers": self._session.get_providers(),
            "device": self._device,
            "intra_op_threads": options.intra_op_num_threads or "runtime default",
            "timed_span": "InferenceSession.run: host input in, host output out",
        }

    def own_compute_ms(self) -> list[float]:
        return []  # ONNX Runtime keeps no per-call times unless profiling is on


def open_session(model_path: Path, settings: SessionSettings, device: int) -> OrtSession:
    return OrtSession(model_path, settings, device)
