"""Ascend NPUs: `atc` converts the ONNX model to an OM model, ais_bench's Python API runs it.

`InferSession(device_id, model_path)` with `infer(feeds, mode)`; its per-call execute times come
from `summary()` (2024-02 on: `(start_ms, end_ms)` pairs) or, in 2023 builds, `sumary()` (floats,
ms). A static OM runs one batch size: a short last batch is padded with copies of its first
sample, as ais_bench pads its input files, and the padding's outputs are dropped.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from runner.backends import SessionSettings, ascend
from runner.cache import source_digest
from runner.config import RunConfig
from runner.errors import ConfigError, ToolMissingError

WHEELS_HINT = (
    "install the aclruntime and ais_bench wheels (built from the Ascend tools repository, "
    "ais-bench_workload/tool/ais_bench/backend and ais-bench_workload/tool/ais_bench, after "
    f"{ascend.SET_ENV_HINT}; they are not on PyPI)"
)


@dataclass(frozen=True)
class ConvertSettings:
    """The OM model is a function of the ONNX file (an input of the stage), atc's arguments
    (bs or the dynamic batch sizes, soc_version, atc options) and the CANN release."""

    atc_arguments: tuple[str, ...]  # everything atc is told except the paths
    soc_version: str
    cann: str
    ascend_code: str


def convert_settings(cfg: RunConfig) -> ConvertSettings:
    size = cfg.model.input_size
    soc_version = ascend.resolve_soc_version(cfg.chip)
    arguments = ascend.atc_arguments(cfg.model.input_name, cfg.bs, size, size, cfg.chip,
                                     soc_version)
    return ConvertSettings(tuple(arguments), soc_version, ascend.cann_version(),
                           source_digest(ascend.__name__))


def check(session: SessionSettings, devices: tuple[int, ...]) -> None:
    if session.channels_last:
        raise ConfigError("chip.channels_last=true does not apply to an OM model (atc picks "
                          "the layout): remove it")


def convert(onnx_path: Path, out_dir: Path, settings: ConvertSettings,
            ) -> tuple[Path, dict[str, Any]]:
    om_path, command = ascend.run_atc(onnx_path, out_dir, list(settings.atc_arguments))
    return om_path, {"atc_command": command, "soc_version": settings.soc_version,
                     "cann": settings.cann, "log": "atc.log"}


def infer_session_class() -> type:
    """ais_bench's InferSession; the error names what is missing (a wheel, or CANN)."""
    missing = [name for name in ("aclruntime", "ais_bench")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ToolMissingError(
            f"{' and '.join(missing)} not installed in this Python ({', '.join(missing)} "
            f"cannot be imported): {WHEELS_HINT}"
        )
    try:
        interface = importlib.import_module("ais_bench.infer.interface")
    except ImportError as error:
        if "libascendcl" in str(error) or "libacl" in str(error):
            raise ToolMissingError(
                f"ais_bench cannot load the CANN runtime ({error}): {ascend.SET_ENV_HINT}"
            ) from None
        raise ToolMissingError(f"ais_bench cannot be imported ({error}): {WHEELS_HINT}") from None
    return interface.InferSession


def ais_bench_version() -> str:
    for name in ("ais_bench", "aclruntime"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    module = importlib.import_module("ais_bench")
    return f"ais_bench {getattr(module, '__version__', 'unknown version')}"


def exec_ms(entry: Any) -> float:
    """One entry of ais_bench's exec_time_list as milliseconds."""
    if isinstance(entry, (int, float, np.floating, np.integer)):
        return float(entry)  # 2023: the execute time itself
    start, end = entry  # 2024-02 on: (start_ms, end_ms)
    return float(end) - float(start)


class AisBenchSession:
    def __init__(self, model_path: Path, settings: SessionSettings, device: int) -> None:
        infer_session = infer_session_class()
        self._session = infer_session(device, str(model_path))
        self._device = device
        (model_input,) = self._session.get_inputs()
        self._input_shape = [int(d) for d in model_input.shape]
        dynamic = self._input_shape[0] < 0
        if dynamic and not settings.dynamic_batch_sizes:
            raise ConfigError(
                f"{model_path} is a dynamic-batch OM model but chip.dynamic_batch_sizes is empty"
            )
        self._mode = "dymbatch" if dynamic else "static"
        self._sizes = sorted(settings.dynamic_batch_sizes) if dynamic else [self._input_shape[0]]
        # ais_bench renamed sumary() to summary() in 2024 (and made the times pairs)
        self._api = "summary" if hasattr(self._session, "summary") else "sumary"

    def run(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        size = next((s for s in self._sizes if s >= count), None)
        if size is None:
            raise ConfigError(
                f"a batch of {count} does not fit the OM model's batch sizes {self._sizes}"
            )
        if size > count:
            padding = np.repeat(batch[:1], size - count, axis=0)
            batch = np.concatenate([batch, padding])
        (logits, *_) = self._session.infer([np.ascontiguousarray(batch)], mode=self._mode)
        return np.asarray(logits).reshape(size, -1)[:count]

    def own_compute_ms(self) -> list[float]:
        summary = getattr(self._session, self._api)()
        return [exec_ms(entry) for entry in summary.exec_time_list]

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": ais_bench_version(),
            "api": f"InferSession.{self._api}()",
            "device": self._device,
            "om_input_shape": self._input_shape,
            "mode": self._mode,
            "batch_sizes": self._sizes,
            "timed_span": "InferSession.infer: host numpy in, H2D copy, execute, D2H copy, "
                          "numpy out; ais_bench's own exec times (reported beside) cover the "
                          "execute only",
        }


def open_session(model_path: Path, settings: SessionSettings, device: int) -> AisBenchSession:
    return AisBenchSession(model_path, settings, device)
