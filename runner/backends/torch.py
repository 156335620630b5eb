"""PyTorch eager on the CPU or an NVIDIA GPU (fp32 or fp16, optionally channels_last); needs
only torch (and torchvision for its models).

`convert` rebuilds the nn.Module the ONNX file was exported from (model.arch + the weights),
checks on a probe batch that it computes what the ONNX file computes, and saves the architecture
name with the state dict: a session rebuilds the module from that file alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runner import environment
from runner.backends import ConversionError, SessionSettings
from runner.config import RunConfig
from runner.errors import ConfigError, ToolMissingError
from runner.models.spec import ModelSpec

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.pt"
PROBE_BATCH = 2
# fp32 on the CPU, both sides: a different model differs by orders of magnitude more
PROBE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ConvertSettings:
    """The saved module depends on the model spec alone (not on bs or the device)."""

    model: ModelSpec
    input_size: int  # of the probe batch compared with the ONNX file

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ConvertSettings:
        return cls(ModelSpec.from_config(cfg), cfg.model.input_size)


def convert_settings(cfg: RunConfig) -> ConvertSettings:
    return ConvertSettings.from_config(cfg)


def check(session: SessionSettings, devices: tuple[int, ...]) -> None:
    """Refuse a device this torch cannot use before any work is done for it."""
    if session.device_type != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        built_for = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (CPU build)"
        raise ToolMissingError(
            f"chip.device_type=cuda, but torch {torch.__version__} (built for {built_for}) sees "
            "no CUDA device: run on a machine with an NVIDIA GPU and driver, or use "
            "chip=torch_cpu"
        )
    count = torch.cuda.device_count()
    if max(devices) >= count:
        raise ConfigError(
            f"chip.devices={list(devices)}: torch sees {count} CUDA device(s), ids "
            f"0..{count - 1}"
        )


def _check_against_onnx(net: torch.nn.Module, onnx_path: Path, settings: ConvertSettings,
                        ) -> float:
    import onnxruntime as ort
    import torch

    size = settings.input_size
    probe = np.random.default_rng(settings.model.seed).standard_normal(
        (PROBE_BATCH, 3, size, size), dtype=np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: probe})[0]
    with torch.inference_mode():
        got = net(torch.from_numpy(probe)).numpy()
    difference = float(np.abs(got - expected).max())
    if not difference <= PROBE_TOLERANCE * (1.0 + float(np.abs(expected).max())):
        raise ConversionError(
            f"the PyTorch model rebuilt from model.arch={settings.model.arch} and model.weights "
            "does "
            f"not compute what {onnx_path} computes (max |difference| {difference:.3g} on a "
            "probe batch): the export entry was made from other weights; rerun with "
            "cache.force=[export,convert]"
        )
    return difference


def convert(onnx_path: Path, out_dir: Path, settings: ConvertSettings,
            ) -> tuple[Path, dict[str, Any]]:
    import torch

    spec = settings.model
    net = spec.build()
    difference = _check_against_onnx(net, onnx_path, settings)
    target = out_dir / MODEL_FILE
    torch.save({"arch": spec.arch, "arch_kwargs": dict(spec.arch_kwargs),
                "state_dict": net.state_dict()}, target)
    return target, {"torch": torch.__version__, "arch": spec.arch,
                    "probe_max_abs_difference_vs_onnx": difference}


class TorchSession:
    def __init__(self, model_path: Path, settings: SessionSettings, device: int) -> None:
        import torch

        from runner.models import build

        check(settings, (device,))
        saved = torch.load(model_path, map_location="cpu", weights_only=True)
        net = build.resolve_arch(saved["arch"], settings.allowed_prefixes)(**saved["arch_kwargs"])
        net.load_state_dict(saved["state_dict"])
        chip = settings
        if chip.device_type == "cuda":
            self._device = torch.device("cuda", device)
            torch.backends.cudnn.benchmark = True  # kernels picked during the warm-up
            # fp32 means fp32: no TensorFloat-32 in convolutions and matmuls
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        else:
            self._device = torch.device("cpu")
            if chip.threads:
                torch.set_num_threads(chip.threads)
        self._dtype = torch.float16 if chip.precision == "fp16" else torch.float32
        self._layout = torch.channels_last if chip.channels_last else torch.contiguous_format
        self._net = net.eval().to(device=self._device, dtype=self._dtype,
                                  memory_format=self._layout)
        self._chip = chip
        self._torch = torch

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self._device, self._dtype)
            logits = self._net(inputs.contiguous(memory_format=self._layout))
            return logits.float().cpu().numpy()  # .cpu() waits for the GPU

    def own_compute_ms(self) -> list[float]:
        return []

    def describe(self) -> dict[str, Any]:
        torch = self._torch
        on_cuda = self._device.type == "cuda"
        return {
            "runtime": f"torch {torch.__version__}",
            "device": str(self._device),
            "device_name": torch.cuda.get_device_name(self._device) if on_cuda
            else environment.cpu_model(),
            "precision": self._chip.precision,
            "channels_last": self._chip.channels_last,
            "intra_op_threads": torch.get_num_threads(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark if on_cuda else None,
            "timed_span": "host batch to device and dtype, forward, logits to host as float32"
                          + (" (.cpu() synchronizes the GPU)" if on_cuda else ""),
        }


def open_session(model_path: Path, settings: SessionSettings, device: int) -> TorchSession:
    return TorchSession(model_path, settings, device)
