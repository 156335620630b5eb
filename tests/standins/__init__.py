"""Stand-ins for the Ascend tools, which need NPUs and CANN this project cannot have.

`install(root)` lays them out under `root` the way the real tools are found: `atc` and `npu-smi`
as executables in folders to put on PATH, the `ais_bench` and `aclruntime` packages in folders
to put on PYTHONPATH, a CANN toolkit folder with its version file for ASCEND_HOME_PATH. Each
piece is in its own folder, so a test can leave any one out. Every call is logged to
`calls.jsonl` (see atc.py, npu_smi.py, aclruntime.py and ais_bench/ beside this file).

`env(generation=...)` picks which real ais_bench release the packages behave like (GENERATIONS;
aclruntime.py and ais_bench/infer/interface.py say which real file and commit each follows).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
CANN_VERSION = "8.0.RC1.standin"
# the ais_bench releases the stand-ins reproduce: tools wheels built before 2024-02-01, from
# 2024-02-01, from 2024-06-13 (path/owner/permission checks), and ait/msit's benchmark (2023-10)
GENERATIONS = ("2023", "2024-02", "2024-06", "msit")


def _script(source: Path, target: Path) -> None:
    """An executable run by this Python (which has onnx and onnxruntime)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"#!{sys.executable}\n{source.read_text()}")
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@dataclass
class AscendStandins:
    root: Path

    @property
    def atc_bin(self) -> Path:
        return self.root / "atc-bin"

    @property
    def npu_smi_bin(self) -> Path:
        return self.root / "npu-smi-bin"

    @property
    def ais_bench_site(self) -> Path:
        return self.root / "ais-bench-site"

    @property
    def aclruntime_site(self) -> Path:
        return self.root / "aclruntime-site"

    @property
    def toolkit(self) -> Path:
        return self.root / "ascend-toolkit" / "latest"

    @property
    def log(self) -> Path:
        return self.root / "calls.jsonl"

    def env(self, generation: str = "2024-06", atc: bool = True, npu_smi: bool = True,
            ais_bench: bool = True, aclruntime: bool = True, cann: bool = True,
            chips: str = "310P3", chips_per_npu: int = 1) -> dict[str, str]:
        """Environment variables for a process that sees the chosen tools (and no others)."""
        assert generation in GENERATIONS, generation
        path = [str(p) for p, wanted in ((self.atc_bin, atc), (self.npu_smi_bin, npu_smi))
                if wanted]
        python_path = [str(p) for p, wanted in ((self.ais_bench_site, ais_bench),
                                                (self.aclruntime_site, aclruntime)) if wanted]
        others = [p for p in os.environ.get("PATH", "").split(os.pathsep)
                  if not p.startswith(str(self.root))]  # stand-ins chosen by an earlier call
        env = {
            "PATH": os.pathsep.join([*path, *others]),
            "PYTHONPATH": os.pathsep.join(python_path),
            "RUNNER_STANDIN_LOG": str(self.log),
            "AIS_BENCH_STANDIN_GENERATION": generation,
            "NPU_SMI_STANDIN_CHIPS": chips,
            "NPU_SMI_STANDIN_CHIPS_PER_NPU": str(chips_per_npu),
            "ASCEND_HOME_PATH": str(self.toolkit) if cann else "",
            "ASCEND_TOOLKIT_HOME": str(self.toolkit) if cann else "",
        }
        return env

    def calls(self, tool: str | None = None, call: str | None = None) -> list[dict[str, Any]]:
        if not self.log.is_file():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [e for e in entries if (tool is None or e["tool"] == tool)
                and (call is None or e.get("call") == call)]

    def clear_calls(self) -> None:
        self.log.unlink(missing_ok=True)


def install(root: Path) -> AscendStandins:
    standins = AscendStandins(root)
    _script(HERE / "atc.py", standins.atc_bin / "atc")
    _script(HERE / "npu_smi.py", standins.npu_smi_bin / "npu-smi")
    shutil.copytree(HERE / "ais_bench", standins.ais_bench_site / "ais_bench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    standins.aclruntime_site.mkdir(parents=True)
    shutil.copy(HERE / "aclruntime.py", standins.aclruntime_site / "aclruntime.py")
    info = standins.toolkit / "x86_64-linux" / "ascend_toolkit_install.info"
    info.parent.mkdir(parents=True)
    info.write_text(f"package_name=Ascend-cann-toolkit\nversion={CANN_VERSION}\n")
    return standins
