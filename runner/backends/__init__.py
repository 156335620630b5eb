"""The system under test: one module per runtime, each able to convert an ONNX model for its
chip and to open a session that runs batches. Stages pick the module named by `chip.runtime`:

  onnxruntime  ONNX Runtime, CPU or CUDA provider (chip=cpu, chip=cuda_ort)
  torch        PyTorch eager on CPU or CUDA, fp32/fp16, channels_last (chip=torch_cpu, chip=cuda)
  ais_bench    Ascend NPUs: atc converts to an OM model, ais_bench's InferSession runs it
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from runner.config import ChipConfig
from runner.errors import RunnerError

if TYPE_CHECKING:
    from runner.config import RunConfig


class ConversionError(RunnerError):
    """The chip's model could not be made from the ONNX file (atc failed, a mismatch)."""


class Session(Protocol):
    """A loaded model on one device."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a float32 NCHW batch; blocks until the result is on the host."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts about the session (runtime, device, threads, timed span) for the run's record."""
        ...

    def own_compute_ms(self) -> list[float]:
        """The runtime's own per-call compute times (ms, oldest first) where it reports them
        (ais_bench's summary); empty where it does not."""
        ...


class Backend(Protocol):
    def convert(self, onnx_path: Path, out_dir: Path, cfg: RunConfig) -> Path: ...

    def open_session(self, model_path: Path, chip: ChipConfig, device: int) -> Session: ...

    def convert_key(self, cfg: RunConfig) -> dict[str, Any]:
        """The settings the converted model depends on (part of the convert cache key)."""
        ...


def backend_for(chip: ChipConfig) -> ModuleType:
    return importlib.import_module(f"runner.backends.{chip.runtime}")
