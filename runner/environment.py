"""The environment a number was measured on: host, processor, library versions, threads."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import cache
from importlib import metadata
from typing import Any

from runner.config import PROJECT_ROOT, ChipConfig

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


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
            timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def capture(chip: ChipConfig) -> dict[str, Any]:
    """Facts about this machine and chip, logged as MLflow tags (`env.*`)."""
    facts: dict[str, Any] = {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "chip": chip.name,
        "runtime": chip.runtime,
        "threads": chip.threads or "runtime default",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
    }
    facts.update({f"lib.{name}": version for name, version in library_versions().items()})
    return facts
