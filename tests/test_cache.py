"""The stage cache: finished entries only by rename, resume from a partial folder, locking."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from runner.cache import StageOutput, atomic_save_npy, lookup, run_cached


def test_a_failed_compute_leaves_no_finished_entry(tmp_path: Path) -> None:
    def broken(out_dir: Path) -> StageOutput:
        (out_dir / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_cached(tmp_path, "stage", "k1", broken)
    assert lookup(tmp_path, "stage", "k1") is None
    assert not (tmp_path / "stage" / "k1").exists()
    assert (tmp_path / "stage" / "k1.partial" / "half.txt").exists()


def test_a_rerun_resumes_from_the_partial_folder_and_then_hits(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def chunked(fail_after: int | None):
        def compute(out_dir: Path) -> StageOutput:
            present = sorted(p.name for p in out_dir.glob("c*.npy"))
            calls.append(present)
            for index in range(4):
                target = out_dir / f"c{index}.npy"
                if target.exists():
                    continue
                if fail_after is not None and index >= fail_after:
                    raise KeyboardInterrupt
                atomic_save_npy(target, np.full(3, index))
            return StageOutput(artifacts={"x": "c0.npy"}, metrics={"m": 1.0})
        return compute

    with pytest.raises(KeyboardInterrupt):
        run_cached(tmp_path, "s", "k", chunked(fail_after=2))
    entry = run_cached(tmp_path, "s", "k", chunked(fail_after=None))
    assert calls[1] == ["c0.npy", "c1.npy"]  # resumed with the two finished chunks
    assert not entry.hit and entry.output.metrics == {"m": 1.0}
    again = run_cached(tmp_path, "s", "k", chunked(fail_after=0))
    assert again.hit and np.load(again.artifact("x")).tolist() == [0, 0, 0]
    assert json.loads((again.path / "result.json").read_text())["metrics"] == {"m": 1.0}


def test_force_recomputes(tmp_path: Path) -> None:
    counter = []

    def compute(out_dir: Path) -> StageOutput:
        counter.append(1)
        return StageOutput()

    run_cached(tmp_path, "s", "k", compute)
    run_cached(tmp_path, "s", "k", compute)
    run_cached(tmp_path, "s", "k", compute, force=True)
    assert len(counter) == 2


def _slow_compute(args: tuple[str, str]) -> bool:
    cache_dir, marker = args

    def compute(out_dir: Path) -> StageOutput:
        with open(marker, "a") as log:
            log.write("start\n")
        time.sleep(0.5)
        return StageOutput()

    return run_cached(Path(cache_dir), "s", "same-key", compute).hit


def test_two_processes_compute_one_entry_once(tmp_path: Path) -> None:
    marker = tmp_path / "calls.txt"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        hits = pool.map(_slow_compute, [(str(tmp_path / "cache"), str(marker))] * 2)
    assert marker.read_text().count("start") == 1
    assert sorted(hits) == [False, True]
