"""The system under test: one module per runtime, each able to convert an ONNX model for its
chip and to open a session that runs batches. Stages pick the module named by `chip.runtime`:

  onnxruntime  ONNX Runtime, CPU or CUDA provider (chip=cpu, chip=cuda_ort)
  torch        PyTorch on CPU or CUDA, fp32/fp16/bf16, channels_last, torch.compile, CUDA graphs
               (chip=torch_cpu, chip=cuda)
  ais_bench    Ascend NPUs: atc converts to an OM model, ais_bench's InferSession runs it

Every backend module is a `Backend`: it sees its own settings objects, never the whole config.
Adding a runtime = one module here satisfying `Backend` + one `conf/chip/<name>.yaml`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from runner.cache import source_digest
from runner.config import BUILTIN_ARCH_PREFIXES, RunConfig, allowed_arch_prefixes
from runner.errors import RunnerError
from runner.settings import runtime_only


class ConversionError(RunnerError):
    """The chip's model could not be made from the ONNX file (atc failed, a mismatch)."""


@dataclass(frozen=True)
class SessionSettings:
    """What opening a session on one device reads: the chip's runtime settings."""

    runtime: str
    device_type: str  # cpu | cuda | npu
    providers: tuple[str, ...]  # ONNX Runtime execution providers
    precision: str  # fp32 | fp16 | bf16
    threads: int  # intra-op threads per device; 0 lets the runtime decide
    channels_last: bool
    dynamic_batch_sizes: tuple[int, ...]  # Ascend dynamic-batch OM gears
    compile: bool  # torch.compile (fused kernels: the logits may differ in the last bits)
    cuda_graphs: bool  # torch on CUDA: one captured graph per batch shape, replayed
    # a torch session rebuilds model.arch: the packages it may import from
    allowed_prefixes: tuple[str, ...] = runtime_only(BUILTIN_ARCH_PREFIXES)
    # torch.compile's on-disk caches (Inductor), under paths.cache_dir: reused by later runs
    compile_cache_dir: str = runtime_only("")

    @classmethod
    def from_config(cls, cfg: RunConfig) -> SessionSettings:
        chip = cfg.chip
        return cls(runtime=chip.runtime, device_type=chip.device_type,
                   providers=tuple(chip.providers), precision=chip.precision,
                   threads=chip.threads, channels_last=chip.channels_last,
                   dynamic_batch_sizes=tuple(chip.dynamic_batch_sizes),
                   compile=chip.compile, cuda_graphs=chip.cuda_graphs,
                   allowed_prefixes=allowed_arch_prefixes(cfg.security.extra_arch_prefixes),
                   compile_cache_dir=str(cfg.cache_dir / "torchinductor"))


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
        (ais_bench's summary; CUDA events around torch's forward); empty where it does not."""
        ...


@runtime_checkable
class Backend(Protocol):
    """What a runtime module provides (checked for every module by tests/test_backends.py)."""

    def convert_settings(self, cfg: RunConfig) -> Any:
        """A frozen dataclass: everything `convert` reads (the convert stage's key)."""
        ...

    def check(self, session: SessionSettings, devices: tuple[int, ...]) -> None:
        """Refuse, without doing work, what this runtime cannot do (a precision it would
        ignore, a missing runtime or device)."""
        ...

    def convert(self, onnx_path: Path, out_dir: Path, settings: Any,
                ) -> tuple[Path, dict[str, Any]]:
        """The chip's model made from the ONNX file, in out_dir; its path and facts."""
        ...

    def open_session(self, model_path: Path, settings: SessionSettings, device: int) -> Session:
        ...


RUNTIME_MODULES = {"onnxruntime": "runner.backends.onnxruntime",
                   "torch": "runner.backends.torch",
                   "ais_bench": "runner.backends.ais_bench"}


def backend_for(runtime: str) -> Backend:
    return cast(Backend, importlib.import_module(RUNTIME_MODULES[runtime]))


def backend_code(runtime: str) -> str:
    """Digest of the runtime's module (read, not imported): part of the keys of the stages that
    run it."""
    return source_digest(RUNTIME_MODULES[runtime])
