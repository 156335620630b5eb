"""Environment capture: the device and driver (CPU model, npu-smi, nvidia-smi), runtime and
library versions and thread counts that every run records as `env.*` tags."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from runner import environment
from runner.backends import ascend
from tests.conftest import run_config
from tests.standins import CANN_VERSION, install

# `npu-smi info` of an Atlas 300I card (driver 20.2): one NPU row per chip, chips 0-3
ASCEND310_CARD = """\
+------------------------------------------------------------------------------+
| npu-smi 20.2.0                   Version: 20.2.0                             |
+-------------------+-----------------+----------------------------------------+
| NPU   Name        | Health          | Power(W)          Temp(C)              |
| Chip  Device      | Bus-Id          | AICore(%)         Memory-Usage(MB)     |
+===================+=================+========================================+
| 0     310         | OK              | 12.8              45                   |
| 0     0           | 0000:05:00.0    | 0                 2621 / 8192          |
+===================+=================+========================================+
| 1     310         | OK              | 12.8              44                   |
| 0     1           | 0000:06:00.0    | 0                 2621 / 8192          |
+===================+=================+========================================+
"""
# an Orange Pi AI Pro (Ascend 310B4), columns narrowed: the chip row has no Bus-Id
ASCEND310B = """\
| npu-smi 23.0.rc3                Version: 23.0.rc3                   |
| NPU     Name        | Health   | Power(W)  Temp(C)  Hugepages-Usage(page) |
| Chip    Device      | Bus-Id   | AICore(%) Memory-Usage(MB)               |
| 0       310B4       | OK       | 7.2       37       15    / 15            |
| 0       0           | NA       | 0         1797 / 3513                     |
"""


def test_npu_smi_tables_of_several_drivers() -> None:
    card = ascend.parse_npu_smi(ASCEND310_CARD)
    assert (card.version, card.names) == ("20.2.0", ["310", "310"])
    board = ascend.parse_npu_smi(ASCEND310B)
    assert (board.version, board.names) == ("23.0.rc3", ["310B4"])
    assert ascend.parse_npu_smi("no table here").names == []


def test_cpu_capture_names_the_processor_versions_and_threads() -> None:
    facts = environment.capture(run_config("chip=cpu", "chip.threads=2").chip)
    assert facts["device_name"] == environment.cpu_model() != ""
    assert facts["driver_version"] == "n/a (CPU)"
    assert facts["runtime_version"].startswith("onnxruntime 1.")
    assert facts["threads"] == 2
    assert facts["usable_cores"] == len(os.sched_getaffinity(0))
    assert facts["lib.onnxruntime"] == facts["runtime_version"].split()[1]
    torch_facts = environment.capture(run_config("chip=torch_cpu").chip)
    assert torch_facts["runtime_version"].startswith("torch 2.")
    assert torch_facts["torch_threads"] >= 1


def test_npu_capture_reads_npu_smi_and_cann(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    standins = install(tmp_path)
    for key, value in standins.env(chips="310P3,310P3,310P3,310P3").items():
        monkeypatch.setenv(key, value)
    ascend.npu_smi_info.cache_clear()
    try:
        facts = environment.capture(run_config("chip=ascend310p3", "chip.devices=[2,3]").chip)
    finally:
        ascend.npu_smi_info.cache_clear()
    assert facts["device_name"] == "Ascend310P3"
    assert facts["driver_version"] == "npu-smi 23.0.6"
    assert facts["runtime_version"].startswith(f"CANN {CANN_VERSION}, ais_bench ")
    assert facts["devices"] == "2,3"


def test_cuda_capture_reads_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a stand-in for nvidia-smi's documented query output (csv, noheader): one line per GPU
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!{sys.executable}\nprint('NVIDIA H100 80GB HBM3, 550.54.15')\n"
                    "print('NVIDIA H100 80GB HBM3, 550.54.15')\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    environment.nvidia_smi.cache_clear()
    try:
        facts = environment.capture(run_config("chip=cuda", "chip.devices=[1]").chip)
    finally:
        environment.nvidia_smi.cache_clear()
    assert facts["device_name"] == "NVIDIA H100 80GB HBM3"
    assert facts["driver_version"] == "550.54.15"
    assert facts["runtime_version"].startswith("torch 2.") and "CUDA" in facts["runtime_version"]
