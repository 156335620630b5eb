"""The system under test: one module per runtime, each able to convert an ONNX model for its
chip and to open a session that runs batches. Stages pick the module named by `chip.runtime`."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from runner.config import ChipConfig


class Session(Protocol):
    """A loaded model on one device."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a float32 NCHW batch; blocks until the result is on the host."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts about the session (runtime, device, threads) for the run's record."""
        ...


class Backend(Protocol):
    def convert(self, onnx_path: Path, out_dir: Path, chip: ChipConfig, bs: int) -> Path: ...

    def open_session(self, model_path: Path, chip: ChipConfig, device: int) -> Session: ...

    def convert_key(self, chip: ChipConfig, bs: int) -> dict[str, Any]:
        """The settings the converted model depends on (part of the convert cache key)."""
        ...


def backend_for(chip: ChipConfig) -> ModuleType:
    return importlib.import_module(f"runner.backends.{chip.runtime}")
