"""The stage cache: finished entries only by rename, resume from a partial folder, locking."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from runner.cache import (
    DamagedEntry,
    StageOutput,
    atomic_save_npy,
    atomic_write_text,
    finish_file,
    lookup,
    run_cached,
)
from runner.config import PROJECT_ROOT
from runner.errors import StorageError
from runner.locks import file_lock


def test_a_failed_compute_leaves_no_finished_entry_and_nothing_half_written(
        tmp_path: Path) -> None:
    def broken(out_dir: Path) -> StageOutput:
        atomic_save_npy(out_dir / "chunk0.npy", np.zeros(3))  # finished: kept for the rerun
        (out_dir / "half.txt").write_text("half")  # written directly: may be half-written
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_cached(tmp_path, "stage", "k1", broken)
    assert lookup(tmp_path, "stage", "k1") is None
    assert not (tmp_path / "stage" / "k1").exists()
    partial = tmp_path / "stage" / "k1.partial"
    assert sorted(p.name for p in partial.iterdir()) == [".chunk0.npy.sum", "chunk0.npy"]


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


# --- integrity: a damaged file is named and recomputed, never used -------------------------


def _chunked_stage(calls: list[int]):
    def compute(out_dir: Path) -> StageOutput:
        calls.append(1)
        for index in range(2):
            if not (out_dir / f"chunk{index}.npy").exists():
                pixels = np.full((1100, 1024), index, np.uint8)  # 1.1 MB: above SMALL_FILE
                atomic_save_npy(out_dir / f"chunk{index}.npy", pixels)
        atomic_write_text(out_dir / "manifest.json", json.dumps({"chunks": 2}))
        return StageOutput(artifacts={"data": "."}, metrics={"n": 2.0})
    return compute


def _invert(path: Path) -> None:
    """What the issue did: the pixels of a finished chunk inverted in place (same size)."""
    pixels = np.load(path, mmap_mode="r+")
    pixels[:] = 255 - pixels
    pixels.flush()


@pytest.mark.parametrize(("damage", "verify", "expected"), [
    (lambda e: _invert(e / "chunk1.npy"), "full", r"chunk1.npy does not have the sha256"),
    (lambda e: _invert(e / "chunk1.npy"), "stat", r"chunk1.npy does not have the sha256 recorded "
     r"when it was written \(its size is the same, its modification time is not\)"),
    (lambda e: os.truncate(e / "chunk0.npy", 100), "size", r"chunk0.npy has 100 bytes where"),
    (lambda e: (e / "chunk0.npy").unlink(), "size", r"chunk0.npy is missing"),
    (lambda e: (e / "manifest.json").write_text('{"chunks": 3}'), "size",
     r"manifest.json does not have the sha256"),
    (lambda e: (e / "result.json").write_text('{"artifacts": '), "size",
     r"result.json is damaged or unreadable"),
    (lambda e: (e / "result.json").write_text(
        (e / "result.json").read_text().replace('"n": 2.0', '"n": 3.0')), "size",
     r"result.json is damaged or unreadable \(its content does not match its digest\)"),
])
def test_a_damaged_entry_is_named_and_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 damage, verify: str, expected: str) -> None:
    calls: list[int] = []
    entry = run_cached(tmp_path, "s", "k", _chunked_stage(calls))
    assert run_cached(tmp_path, "s", "k", _chunked_stage(calls), verify=verify).hit
    damage(entry.path)
    with pytest.raises(DamagedEntry, match=expected):
        lookup(tmp_path, "s", "k", verify)
    with caplog.at_level(logging.WARNING, logger="runner"):
        again = run_cached(tmp_path, "s", "k", _chunked_stage(calls), verify=verify)
    assert not again.hit and len(calls) == 2
    assert any("is damaged" in r.getMessage() and "computing it again" in r.getMessage()
               for r in caplog.records)
    assert np.load(again.path / "chunk1.npy").max() == 1  # the recomputed pixels, not inverted
    assert lookup(tmp_path, "s", "k", "full") is not None


def test_same_size_damage_in_place_is_seen_by_default(tmp_path: Path) -> None:
    """Issue 31: an in-place edit of the same size (numpy's mmap r+, flushed) changes the file's
    mtime and ctime; the default check (stat, as git's index) re-hashes it and finds it. The
    size-only check cannot (the chunks here are 1.1 MB, above the always-hashed size)."""
    from runner.config import CacheConfig

    assert CacheConfig().verify == "stat"
    entry = run_cached(tmp_path, "s", "k", _chunked_stage([]))
    record = json.loads((entry.path / "result.json").read_text())
    assert set(record["stats"]) == set(record["files"])
    _invert(entry.path / "chunk1.npy")
    assert lookup(tmp_path, "s", "k", "size") is not None
    with pytest.raises(DamagedEntry, match=r"chunk1\.npy does not have the sha256"):
        lookup(tmp_path, "s", "k")
    with pytest.raises(DamagedEntry):
        lookup(tmp_path, "s", "k", "full")


def test_a_changed_stat_of_unchanged_content_is_hashed_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the cache (new inodes) or an entry written before stats were recorded: each
    file is hashed once, its new stat recorded, and the next lookup reads no file."""
    import shutil

    from runner import cache

    run_cached(tmp_path / "a", "s", "k", _chunked_stage([]))
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # new inodes and ctimes, the same bytes
    old = tmp_path / "b" / "s" / "k" / "result.json"
    record = json.loads(old.read_text())
    del record["stats"]["chunk0.npy"]  # as an entry written before stats were recorded
    record.pop("digest")
    record["digest"] = cache.digest_json(record)
    old.write_text(json.dumps(record))
    hashed: list[str] = []
    real = cache.digest_file
    monkeypatch.setattr(cache, "digest_file",
                        lambda path, *a: hashed.append(Path(path).name) or real(path, *a))
    assert lookup(tmp_path / "b", "s", "k") is not None
    assert {"chunk0.npy", "chunk1.npy"} <= set(hashed)
    hashed.clear()
    assert lookup(tmp_path / "b", "s", "k") is not None
    assert not {"chunk0.npy", "chunk1.npy"} & set(hashed)  # only the small files, as always


def test_a_resumed_partial_folder_keeps_only_sealed_matching_chunks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    partial = tmp_path / "s" / "k.partial"
    partial.mkdir(parents=True)
    atomic_save_npy(partial / "chunk0.npy", np.zeros((64, 64), np.uint8))
    atomic_save_npy(partial / "chunk1.npy", np.ones((64, 64), np.uint8))
    os.truncate(partial / "chunk1.npy", 200)  # damaged after it was sealed
    (partial / "manifest.json").write_text("{")  # unsealed: maybe half-written
    (partial / ".chunk2.npy.tmp-123").write_bytes(b"x")  # a killed run's temporary file
    # the sidecar of a chunk that an interrupt kept from being renamed into place
    (partial / ".chunk3.npy.sum").write_text('{"size": 1, "sha256": "0"}')
    seen: list[list[str]] = []

    def compute(out_dir: Path) -> StageOutput:
        seen.append(sorted(p.name for p in out_dir.iterdir()))
        return _chunked_stage([])(out_dir)

    with caplog.at_level(logging.WARNING, logger="runner"):
        entry = run_cached(tmp_path, "s", "k", compute)
    assert seen == [[".chunk0.npy.sum", "chunk0.npy"]]
    assert any("chunk1.npy has 200 bytes" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in entry.path.iterdir()) == [
        "chunk0.npy", "chunk1.npy", "manifest.json", "result.json"]


def test_a_finished_file_is_sealed_before_it_appears(tmp_path: Path) -> None:
    """finish_file writes the sidecar, then renames: a chunk that can be seen is one a resume
    keeps. A rename that fails takes its sidecar back."""
    filling = tmp_path / ".chunk0.npy.filling"
    with open(filling, "wb") as stream:
        np.save(stream, np.arange(10))
    sidecar_when_placed = []
    real_replace = os.replace

    def replace_and_look(source: Path, target: Path) -> None:  # the renames, watched
        if Path(target).name == "chunk0.npy":
            sidecar_when_placed.append((tmp_path / ".chunk0.npy.sum").exists())
        real_replace(source, target)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", replace_and_look)
        finish_file(filling, tmp_path / "chunk0.npy")
    assert sidecar_when_placed == [True] and not filling.exists()
    record = json.loads((tmp_path / ".chunk0.npy.sum").read_text())
    assert record["size"] == (tmp_path / "chunk0.npy").stat().st_size
    np.save(tmp_path / "again.npy", np.arange(3))
    (tmp_path / "chunk1.npy").mkdir()  # the rename cannot replace a directory
    (tmp_path / "chunk1.npy" / "x").write_text("")
    with pytest.raises(OSError):
        finish_file(tmp_path / "again.npy", tmp_path / "chunk1.npy")
    assert not (tmp_path / ".chunk1.npy.sum").exists()


def test_a_full_disk_leaves_no_half_written_file(tmp_path: Path) -> None:
    """Export writes model.onnx straight into the partial folder; ENOSPC must not leave it."""
    cache = tmp_path / "cache"

    def export(out_dir: Path) -> StageOutput:
        (out_dir / "model.onnx").write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "model.onnx"))

    with pytest.raises(StorageError, match=r"cannot write the export cache entry"):
        run_cached(cache, "export", "k", export)
    assert not (cache / "export" / "k.partial").exists()
    assert not (cache / "export" / "k").exists()


# --- the per-key lock: whom a run waits for, and a holder that is gone ------------------------

_HOLD = """
import os, sys, time
from pathlib import Path
from runner.locks import file_lock
with file_lock(Path(sys.argv[1])):
    if sys.argv[2] == "orphan":
        # a forked worker inherits the lock's descriptor and outlives the killed run
        if os.fork() == 0:
            time.sleep(120)
            os._exit(0)
    print("locked", flush=True)
    if sys.argv[2] == "orphan":
        os.kill(os.getpid(), 9)
    time.sleep(float(sys.argv[3]))
"""


def _holder(lock: Path, mode: str, hold_s: float = 0) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock), mode, str(hold_s)],
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "locked\n"
    return process


def test_a_waiting_run_names_the_holder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = tmp_path / "k.lock"
    holder = _holder(lock, "live", hold_s=1.5)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="runner"), file_lock(lock):
        waited = time.monotonic() - started
    holder.wait(timeout=30)
    assert waited > 0.5
    assert any(f"held by pid {holder.pid} on " in r.getMessage() for r in caplog.records)


def test_a_lock_kept_by_a_dead_runs_orphan_is_taken_over(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = tmp_path / "s" / "k.lock"  # the lock of run_cached(tmp_path, "s", "k", ...)
    lock.parent.mkdir()
    holder = _holder(lock, "orphan")
    holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    orphans = [p for p in psutil.process_iter(["cmdline"])
               if p.info["cmdline"] and str(lock) in p.info["cmdline"]]
    assert orphans, "the forked child should still hold the lock"
    try:
        with caplog.at_level(logging.WARNING, logger="runner"):
            started = time.monotonic()
            calls: list[int] = []
            entry = run_cached(tmp_path, "s", "k", _chunked_stage(calls))
        assert time.monotonic() - started < 10 and not entry.hit
        assert any(f"pid {holder.pid}" in r.getMessage() and "taking it over" in r.getMessage()
                   for r in caplog.records)
    finally:
        for orphan in orphans:
            orphan.kill()
