"""Ascend NPUs: `atc` converts the ONNX model to an OM model, ais_bench's Python API runs it.

`InferSession(device_id, model_path)` with `infer(feeds, mode)`; works with every ais_bench
release (tests/standins/ reproduces each, citing the real files and commits):
- before 2024-02-01, `infer` prepares only dymshape/dymdims and runs any other mode as it is, so
  a dynamic-batch OM keeps its largest gear's input size: the session calls
  `set_dynamic_batchsize(n)` (in every release) before each `infer(..., mode="dymbatch")`;
- from 2024-06-13 opening a session refuses a model path with characters outside
  `[_A-Za-z0-9/.-]`, a symlink, a file owned by neither the user nor one of their groups, or a
  group/other-writable file: convert writes the OM without group/other write, and the session
  checks the path first where the installed ais_bench has those checks, naming the path and fix;
- per-call execute times come from `summary()` (2024-02 on, and ait/msit's benchmark from
  2023-10: float32 `(start_ms, end_ms)` pairs since the session was opened) or `sumary()`
  (earlier: float32 durations, ms);
- errors from the runtime are terse (`[-1][ACL: general failure] `; the cause is in ais_bench's
  `[ERROR]` lines on stdout): they are re-raised naming the device, batch and mode.
A static OM runs one batch size: a short last batch is padded with copies of its first sample,
as ais_bench pads its input files, and the padding's outputs are dropped.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import stat
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from runner.backends import SessionSettings, aipp, ascend
from runner.cache import source_digest
from runner.config import RunConfig
from runner.errors import ConfigError, DeviceRuntimeError, ToolMissingError

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
    # model.preprocess.on_device=true: the aipp.cfg written for --insert_op_conf (its text;
    # runner/backends/aipp.py), "" for the float route
    aipp_cfg: str = ""
    aipp_code: str = ""


def convert_settings(cfg: RunConfig) -> ConvertSettings:
    size = cfg.model.input_size
    soc_version = ascend.resolve_soc_version(cfg.chip)
    arguments = ascend.atc_arguments(cfg.model.input_name, cfg.bs, size,
                                     cfg.model.preprocess.layout, cfg.chip, soc_version)
    recipe = cfg.model.preprocess
    # made here, when the run is planned: a recipe AIPP cannot express stops it before any work
    aipp_cfg = (aipp.from_recipe(recipe.normalization(), size).render() if recipe.on_device
                else "")
    return ConvertSettings(tuple(arguments), soc_version, ascend.cann_version(),
                           source_digest(ascend.__name__), aipp_cfg,
                           source_digest(aipp.__name__) if aipp_cfg else "")


def check(session: SessionSettings, devices: tuple[int, ...]) -> None:
    if session.channels_last:
        raise ConfigError("chip.channels_last=true does not apply to an OM model (atc picks "
                          "the layout): remove it")


def convert(onnx_path: Path, out_dir: Path, settings: ConvertSettings,
            ) -> tuple[Path, dict[str, Any]]:
    arguments = list(settings.atc_arguments)
    if settings.aipp_cfg:
        config_file = out_dir / aipp.CONFIG_FILE
        config_file.write_text(settings.aipp_cfg)
        arguments.append(f"--insert_op_conf={config_file}")
    om_path, command = ascend.run_atc(onnx_path, out_dir, arguments)
    make_readable_only_by_owner_group(om_path)
    facts: dict[str, Any] = {"atc_command": command, "soc_version": settings.soc_version,
                             "cann": settings.cann, "log": "atc.log"}
    if settings.aipp_cfg:
        facts["aipp_cfg"] = aipp.CONFIG_FILE
        facts["input"] = "uint8 (N, H, W, 3) RGB888_U8, normalized by AIPP in fp16"
    return om_path, facts


# ais_bench 2024-06-13 on (interface_check.py, common/path_security_check.py): what a model path
# may contain, and the permission bits a file it reads may not have
PATH_CHARACTERS = re.compile(r"[^_A-Za-z0-9/.-]")
NOT_PERMITTED = stat.S_IWGRP | stat.S_IWOTH


def make_readable_only_by_owner_group(path: Path) -> None:
    """Drop group/other write from a file ais_bench will read (atc writes with the umask)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & NOT_PERMITTED:
        path.chmod(mode & ~NOT_PERMITTED)


def om_path_problem(path: Path) -> str | None:
    """Why ais_bench's path checks (2024-06-13 on) refuse to read `path`, and the fix; None if
    they accept it. The rules: the absolute path, only `[_A-Za-z0-9/.-]`, at most 4096
    characters and 255 per component; a regular file, not a symlink, owned by the user or one of
    their groups, not group/other-writable, readable; suffix `.om`."""
    absolute = os.path.abspath(path)
    odd = sorted(set(PATH_CHARACTERS.findall(absolute)))
    if odd:
        shown = ", ".join(repr(c) for c in odd)
        return (f"it contains {shown}, and ais_bench accepts only A-Z a-z 0-9 _ - / . in a model "
                "path: use a paths.cache_dir (and a working folder) of those characters only")
    if len(absolute) > 4096 or any(len(part) > 255 for part in absolute.split("/")):
        return "it is longer than ais_bench accepts (4096 characters, 255 per folder name)"
    if os.path.islink(absolute):
        return "it is a symbolic link, which ais_bench refuses: point it at the file itself"
    if not os.path.isfile(absolute):
        return "it is not a file"
    status = os.stat(absolute)
    if status.st_uid != os.geteuid() and status.st_gid not in os.getgroups():
        return ("it is owned by neither this user nor one of their groups: run as its owner, "
                "or use a paths.cache_dir of your own")
    mode = stat.S_IMODE(status.st_mode)
    if mode & NOT_PERMITTED:
        return f"it is group- or other-writable (mode {mode:o}): chmod go-w {absolute}"
    if not os.access(absolute, os.R_OK) or not mode & stat.S_IRUSR:
        return f"this user cannot read it (mode {mode:o}): chmod u+r {absolute}"
    if not absolute.endswith(".om"):
        return "its name does not end in .om"
    return None


def checks_model_path(interface: ModuleType) -> bool:
    """Whether this ais_bench checks the model path when a session opens (2024-06-13 on: its
    interface.py imports check_model_path_legality from interface_check)."""
    return hasattr(interface, "check_model_path_legality")


def api_generation(interface: ModuleType) -> str:
    """Which ais_bench API this is, by what its InferSession has."""
    session = interface.InferSession
    if checks_model_path(interface):
        return "2024-06 on: summary() pairs, dymbatch in infer, path checks"
    if hasattr(session, "summary"):
        return "2024-02 on, or ait/msit benchmark 2023-10 on: summary() pairs, dymbatch in infer"
    return "before 2024-02: sumary(), infer runs dymbatch as static"


def interface_module() -> ModuleType:
    """ais_bench.infer.interface; the error names what is missing (a wheel, or CANN)."""
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
    return interface


def infer_session_class() -> type:
    """ais_bench's InferSession; the error names what is missing (a wheel, or CANN)."""
    return interface_module().InferSession


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
        return float(entry)  # before 2023-10 (ait) / 2024-02 (tools): the execute time itself
    # later: (start_ms, end_ms) since the session opened, each a float32, so the difference's
    # resolution coarsens as the session ages (~0.008 ms after 100 s, ~0.06 ms after 17 min)
    start, end = entry
    return float(end) - float(start)


class AisBenchSession:
    def __init__(self, model_path: Path, settings: SessionSettings, device: int) -> None:
        interface = interface_module()
        self._generation = api_generation(interface)
        if checks_model_path(interface) and (problem := om_path_problem(model_path)):
            raise ConfigError(f"ais_bench ({self._generation}) refuses the OM model "
                              f"{os.path.abspath(model_path)}: {problem}")
        self._device = int(device)  # 2024-06 on: an int 0..255, nothing else
        try:
            self._session = interface.InferSession(self._device, str(model_path))
        except (RuntimeError, ValueError, TypeError) as error:
            raise DeviceRuntimeError(
                f"ais_bench could not open {model_path} on device {self._device}: "
                f"{str(error).strip()} (ais_bench prints the cause as [ERROR] lines on stdout)"
            ) from None
        (model_input,) = self._session.get_inputs()
        self._input_shape = [int(d) for d in model_input.shape]
        self._dynamic = self._input_shape[0] < 0
        if self._dynamic and not settings.dynamic_batch_sizes:
            raise ConfigError(
                f"{model_path} is a dynamic-batch OM model but chip.dynamic_batch_sizes is empty"
            )
        self._mode = "dymbatch" if self._dynamic else "static"
        self._sizes = (sorted(settings.dynamic_batch_sizes) if self._dynamic
                       else [self._input_shape[0]])
        # ais_bench renamed sumary() to summary() (ait 2023-10, tools 2024-02)
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
        try:
            if self._dynamic:
                # before 2024-02 infer() ignores mode="dymbatch": set the gear ourselves (later
                # releases set it again from the batch's first dimension, to the same value)
                self._session.set_dynamic_batchsize(size)
            (logits, *_) = self._session.infer([np.ascontiguousarray(batch)], mode=self._mode)
        except (RuntimeError, ValueError) as error:
            raise DeviceRuntimeError(
                f"ais_bench infer failed on device {self._device} (a batch of {size}, mode "
                f"{self._mode}): {str(error).strip()} (ais_bench prints the cause as [ERROR] "
                "lines on stdout)"
            ) from None
        return np.asarray(logits).reshape(size, -1)[:count]

    def own_compute_ms(self) -> list[float]:
        summary = getattr(self._session, self._api)()
        return [exec_ms(entry) for entry in summary.exec_time_list]

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": ais_bench_version(),
            "api": f"InferSession.{self._api}()",
            "api_generation": self._generation,
            "device": self._device,
            "om_input_shape": self._input_shape,
            "mode": self._mode,
            "batch_sizes": self._sizes,
            "dynamic_batch": "set_dynamic_batchsize(n), then infer(mode='dymbatch')"
            if self._dynamic else "none",
            "timed_span": "InferSession.infer: host numpy in, H2D copy, execute, D2H copy, "
                          "numpy out; ais_bench's own exec times (reported beside) cover the "
                          "execute only",
        }


def open_session(model_path: Path, settings: SessionSettings, device: int) -> AisBenchSession:
    return AisBenchSession(model_path, settings, device)
