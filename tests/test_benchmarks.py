"""The benchmark scripts run: each one, shrunk to seconds, prints its table.

They are not timed here (figures come from running them on a quiet machine, see docs/results.md);
this only keeps them working as the code they drive changes (`preprocess_speed` once read a
class from a module it had left).
"""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config import PROJECT_ROOT
from tests.conftest import needs_sample

pytestmark = pytest.mark.slow


def run_script(module: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


QUICK = ("--min-iters", "2", "--min-duration", "0.1")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage cache for the benchmarks that time inference from it: the AlexNet export they
    start from is not what they measure, so it is made once for both."""
    return tmp_path_factory.mktemp("benchmark-cache")


def test_e2e_vs_inference(cache_dir: Path) -> None:
    out = run_script("e2e_vs_inference", "--models", "alexnet", "--bs", "4", "--images", "16",
                     "--rounds", "1", *QUICK, "--cache-dir", str(cache_dir))
    row = next(line for line in out.splitlines() if line.startswith("alexnet"))
    # on the CPU, with the runtime's default threads, the e2e stage's default pass is the serial
    # one (runner.inference.default_prefetch), and that is the pass the verdict judges
    assert row.split()[1] == "4" and ("serial: met" in row or "serial: MISSED" in row)
    assert "per round (fps): serial" in out and "pipelined" in out
    assert "[infer] throughputRate" in out
    assert "CPU stolen by the hypervisor during each timed pass: serial" in out


def test_run_to_run(cache_dir: Path) -> None:
    out = run_script("run_to_run", "--models", "alexnet", "--bs", "2", "--repeats", "2",
                     *QUICK, "--cache-dir", str(cache_dir))
    assert any(line.startswith("alexnet") and "%" in line for line in out.splitlines())
    assert "fps of each run:" in out and "machine probe before each run" in out
    assert "CPU stolen by the hypervisor during each run's timing:" in out


def test_full_size(tmp_path: Path) -> None:
    out = run_script("full_size", "--sizes", "4", "8", "--model", "alexnet", "--bs", "4",
                     "--work", str(tmp_path))
    assert "N=4: wall" in out and "N=8: wall" in out and "CPU stolen by the hypervisor" in out
    # both sizes start with their images on the disk only
    assert len(re.findall(r"their \d+ MB evicted from the page cache: 0% left", out)) == 2, out
    assert any(line.startswith("preprocess") for line in out.splitlines())
    assert "peak PSS" in out
    # the disk per stage: export runs seconds at both sizes, long enough to be sampled
    assert re.search(r"^disk \S+ during each stage", out, re.MULTILINE), out
    assert re.search(r"^export +\d+ / \d+ / \d+% +\d+ / \d+ / \d+%$", out, re.MULTILINE), out
    # the commands' own CPU (python and the runner's imports alone take seconds), kernel split out
    user = re.search(r"^CPU user (\d+) -> (\d+) s", out, re.MULTILINE)
    assert user and int(user[1]) > 0 and int(user[2]) > 0, out
    assert re.search(r"^CPU kernel \d+ -> \d+ s", out, re.MULTILINE), out



def test_full_size_rounds(tmp_path: Path) -> None:
    """--rounds: each size runs once per round, the order swapped, with medians and each
    round's per-image ratio; --stages: only the stages asked for (preprocess alone: four AlexNet
    exports would be most of this test's time, and test_full_size times export already)."""
    out = run_script("full_size", "--sizes", "4", "8", "--model", "alexnet", "--bs", "4",
                     "--stages", "preprocess", "--rounds", "2", "--work", str(tmp_path))
    commands = re.findall(r"^N=(\d+): wall .* preprocess [\d.]+ s$", out, re.MULTILINE)
    assert commands == ["4", "8", "8", "4"], out
    assert not re.search(r"^(export|convert|infer|reference|parity|evaluate) ", out,
                         re.MULTILINE), out
    row = re.search(r"^preprocess +([\d.]+) +([\d.]+) +[\d.]+ +([\d.]+) +[\d.]+ +"
                    r"([\d.]+) ([\d.]+) (met|MISSED) \(target <= 1.1\)$", out, re.MULTILINE)
    assert row, out
    # the medians' time ratio, and each round's per-image ratio beside it
    assert all(float(row[i]) > 0 for i in (3, 4, 5)), out
    assert re.search(r"^peak PSS \d+ -> \d+ MB: ratio [\d.]+, (met|MISSED)", out,
                     re.MULTILINE), out

def test_preprocess_cold(tmp_path: Path) -> None:
    out = run_script("preprocess_cold", "--images", "40", "--rounds", "1", "--work",
                     str(tmp_path))
    # each contender found the images where it was meant to: cached, or evicted to the disk
    assert re.search(r"^cached .* in the page cache before 100%", out, re.MULTILINE), out
    assert re.search(r"^disk +[\d.]+ images/s .* in the page cache before 0%", out,
                     re.MULTILINE), out
    assert "disk / cached images/s: median" in out and "(target >= 0.9)" in out
    if multiprocessing.get_start_method() == "fork":  # the only way to switch read-ahead off
        assert re.search(r"^disk, no read-ahead .* in the page cache before 0%", out,
                         re.MULTILINE), out


@needs_sample
def test_preprocess_speed() -> None:
    out = run_script("preprocess_speed", "--models", "resnet50_mlperf", "alexnet", "--limit",
                     "8", "--copies", "1", "--rounds", "1")
    assert "speed ratio runner/reference" in out and "stolen" in out
    assert "(target >= 5.0)" in out and "(target >= 1.8)" in out  # OpenCV's and PIL's
    cpu = re.findall(r"reference ([\d.]+) \(kernel ([\d.]+)\), runner ([\d.]+) \(kernel "
                     r"([\d.]+)\)", out)
    # the kernel's share is part of the total (it may round to 0.00 over 8 images)
    assert len(cpu) == 2 and all(float(total) >= float(kernel) and float(total) > 0
                                 for row in cpu for total, kernel in (row[:2], row[2:])), out
    assert "fed tensors vs .bin max abs diff 0" in out  # alexnet's PIL recipe: exact


@pytest.mark.parametrize(("commit", "shown"), [
    ("0123456789abcdef0123456789abcdef01234567", "commit 0123456789ab,"),
    ("0123456789abcdef0123456789abcdef01234567-dirty", "commit 0123456789ab-dirty,"),
])
def test_header_says_when_the_tree_was_dirty(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str],
                                             commit: str, shown: str) -> None:
    """A figure taken with uncommitted changes must not pass for the commit's."""
    from benchmarks import common

    monkeypatch.setattr(common.environment, "git_commit", lambda: commit)
    common.header("title", [])
    assert shown in capsys.readouterr().out


@pytest.mark.parametrize("args", [("--sizes", "8", "4"), ("--sizes", "4", "4"), ("--rounds", "0")])
def test_full_size_refuses_bad_arguments_before_any_work(args: tuple[str, ...]) -> None:
    result = subprocess.run([sys.executable, "-m", "benchmarks.full_size", *args],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"error: {args[0]} " in result.stderr, result.stderr
    assert "==" not in result.stdout  # refused before the header, so before generating images


def test_int8(tmp_path: Path) -> None:
    # the real sample where the machine has one, generated images otherwise
    out = run_script("int8", "--models", "alexnet", "--bs", "2", "--images", "8",
                     "--calibration-images", "4", "--rounds", "1", *QUICK, "--cache-dir",
                     str(tmp_path))
    row = next(line for line in out.splitlines() if line.startswith("alexnet") and "." in line)
    figures = row.split()
    fp32, int8, ratio = float(figures[2]), float(figures[4]), float(figures[6])
    assert fp32 > 0 and int8 > 0 and ratio == pytest.approx(int8 / fp32, rel=0.02)
    agreement = next(line for line in out.splitlines()
                     if line.startswith("alexnet") and line.split()[1] == "8")
    agree, relative = float(agreement.split()[2]), float(agreement.split()[3])
    assert 0 <= agree <= 1 and 0 < relative < 0.5  # int8 differs from fp32, and not wildly
    assert "loads per round: fp32" in out and "MinMax on 4 images" in out


def test_on_device(tmp_path: Path) -> None:
    out = run_script("on_device", "--models", "alexnet", "--bs", "4", "--images", "8",
                     "--rounds", "1", "--cache-dir", str(tmp_path), "--sample", "")
    rows = [line.split() for line in out.splitlines() if line.startswith("alexnet")]
    cpu = next(r for r in rows if r[1] == "cpu")
    assert float(cpu[4]) == 0 and float(cpu[5]) == 1  # bit for bit the float route's logits
    ascend = next(r for r in rows if r[1] == "ascend310p3")
    assert 0 < float(ascend[4]) < 0.1  # AIPP in fp16 is not the float OM's input
    sizes = next(r for r in rows if r[-1] == "0.25")
    assert sizes[2:4] == ["602,112", "150,528"]
    speed = next(r for r in rows if r[1] == "4")
    assert float(speed[2]) > 0 and float(speed[4]) > 0
    assert "loads per round: host_float" in out


def test_compare_noise(cache_dir: Path) -> None:
    # one pair of each kind, cut short; the repeats in one process (isolated repeats cost a
    # process each, and test_devices runs them)
    out = run_script("compare_noise", "--pairs", "1", "--quick", "--repeats", "one process",
                     "--cache-dir", str(cache_dir))
    assert "identical pair 1, repeats in one process: repeat-spread:" in out
    assert "slower pair 1, repeats in one process: repeat-spread: throughput" in out
    summary = re.search(r"repeats in one process, rule repeat-spread: false alarms (\d)/1 "
                        r".*SAME on every figure (\d)/1", out)
    assert summary is not None and int(summary[1]) + int(summary[2]) <= 1
    assert re.search(r"rule repeat-spread: detection: throughput REGRESSED in [01]/1", out)
    assert "fresh processes" not in out.split("repeats:", 1)[1].splitlines()[0]


def test_repeat_isolation(cache_dir: Path) -> None:
    out = run_script("repeat_isolation", "--models", "alexnet", "--bs", "2", "--rounds", "1",
                     "--cache-dir", str(cache_dir), "--benchmark", "benchmark.min_iters=2",
                     "benchmark.min_duration_s=0.1", "benchmark.warmup_min_s=0")
    row = next(line.split() for line in out.splitlines() if line.startswith("alexnet"))
    fresh, one, ratio = float(row[2]), float(row[3]), float(row[4])
    assert fresh > 0 and one > 0 and ratio == pytest.approx(fresh / one, abs=0.01)
    assert "round 1: fresh processes" in out and "one process" in out
