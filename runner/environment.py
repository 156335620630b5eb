"""The environment a number was measured on: host, processor, library versions, threads."""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import socket
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Any

from runner.config import PROJECT_ROOT, ChipConfig
from runner.tools import tool_output

LIBRARIES = ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "pillow",
             "hydra-core", "omegaconf", "mlflow", "ais_bench", "aclruntime")


@cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_id() -> str:
    return f"{socket.gethostname()}/{cpu_model()}/{os.cpu_count()} cores"


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def module_version(name: str) -> str:
    """A package's version: installed metadata, else its __version__; 'not installed'."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
    if importlib.util.find_spec(name) is None:
        return "not installed"
    try:
        return str(getattr(importlib.import_module(name), "__version__", "unknown"))
    except ImportError as error:
        return f"unusable ({error})"


def git_commit() -> str:
    commit = tool_output(["git", "rev-parse", "HEAD"], timeout_s=5, cwd=PROJECT_ROOT)
    dirty = tool_output(["git", "status", "--porcelain", "--untracked-files=no"], timeout_s=5,
                        cwd=PROJECT_ROOT)
    if commit is None or dirty is None:
        return "unknown"
    return f"{commit.strip()}-dirty" if dirty.strip() else commit.strip()


@dataclass(frozen=True)
class ChipFacts:
    """What the environment record needs to know of the chip."""

    name: str
    runtime: str
    device_type: str
    threads: int
    devices: tuple[int, ...]
    soc_version: str | None = None

    @classmethod
    def of_session(cls, name: str, session: Any, devices: tuple[int, ...]) -> ChipFacts:
        """From a stage's chip name, its `backends.SessionSettings` and its devices."""
        return cls(name, session.runtime, session.device_type, session.threads, devices)

    @classmethod
    def of(cls, chip: ChipConfig) -> ChipFacts:
        return cls(chip.name, chip.runtime, chip.device_type, chip.threads,
                   tuple(chip.devices), chip.soc_version)


@cache
def nvidia_smi() -> list[tuple[str, str]] | None:
    """(name, driver version) of each GPU, from nvidia-smi; None without it."""
    out = tool_output(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if out is None:
        return None
    rows = [line.rsplit(",", 1) for line in out.splitlines() if "," in line]
    return [(name.strip(), driver.strip()) for name, driver in rows]


def _pick(values: list[str], devices: tuple[int, ...]) -> str:
    """The values of the run's devices (all of them where the ids do not index the list)."""
    chosen = [values[d] for d in devices if d < len(values)] or values
    return ",".join(dict.fromkeys(chosen))


def _cuda_facts(chip: ChipFacts) -> dict[str, Any]:
    gpus = nvidia_smi()
    facts: dict[str, Any] = {
        "device_name": _pick([n for n, _ in gpus], chip.devices) if gpus
        else "unknown (nvidia-smi not found)",
        "driver_version": _pick([d for _, d in gpus], chip.devices) if gpus else "unknown",
    }
    if chip.runtime == "torch":
        import torch

        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        facts["runtime_version"] = (f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
                                    f"cuDNN {cudnn}")
        facts["cuda_available"] = torch.cuda.is_available()
    else:
        versions = library_versions()
        ort_version = versions.get("onnxruntime-gpu") or versions.get("onnxruntime")
        facts["runtime_version"] = f"onnxruntime {ort_version}"
    return facts


def _npu_facts(chip: ChipFacts) -> dict[str, Any]:
    from runner.backends import ascend

    info = ascend.npu_smi_info()
    if info and info.devices:
        # by device id: on a card of several chips (Atlas 300I Duo) one NPU row names two devices
        names = [info.devices[d] for d in chip.devices if d in info.devices] or info.names
        device_name = ",".join(dict.fromkeys(f"Ascend{n}" for n in names))
    else:
        device_name = "unknown (npu-smi not found or lists no NPU)"
    return {
        "device_name": device_name,
        "driver_version": f"npu-smi {info.version}" if info else "unknown",
        "runtime_version": f"CANN {ascend.cann_version()}, ais_bench "
                           f"{module_version('ais_bench')}, aclruntime "
                           f"{module_version('aclruntime')}",
        "soc_version": chip.soc_version,
    }


def _thread_facts(chip: ChipFacts) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "threads": chip.threads or "runtime default",  # intra-op threads per device
        "usable_cores": len(os.sched_getaffinity(0)),
    }
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        facts[variable.lower()] = os.environ.get(variable, "unset")
    if chip.runtime == "torch":
        import torch

        facts["torch_threads"] = torch.get_num_threads()
    return facts


def capture(chip: ChipConfig | ChipFacts) -> dict[str, Any]:
    """Facts about this machine and chip, logged in each run's run.json (`environment`): the
    device and its driver (nvidia-smi, npu-smi or the CPU model), runtime and library versions,
    threads."""
    if isinstance(chip, ChipConfig):
        chip = ChipFacts.of(chip)
    facts: dict[str, Any] = {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "chip": chip.name,
        "runtime": chip.runtime,
        "device_type": chip.device_type,
        "devices": ",".join(map(str, chip.devices)),
    }
    if chip.device_type == "cuda":
        facts.update(_cuda_facts(chip))
    elif chip.device_type == "npu":
        facts.update(_npu_facts(chip))
    else:
        facts.update({"device_name": cpu_model(), "driver_version": "n/a (CPU)",
                      "runtime_version": f"{chip.runtime} "
                      f"{library_versions().get(chip.runtime, 'unknown')}"})
    facts.update(_thread_facts(chip))
    facts.update({f"lib.{name}": version for name, version in library_versions().items()})
    return facts
