"""What checking a cache hit costs, per `cache.verify` mode, on a preprocessed ImageNet val.

Builds one preprocess-shaped cache entry through the runner's own cache (runner.cache.run_cached):
`--images` uint8 crops (default 50,000 of 224x224x3: 7.5 GB) in chunks of `--chunk-size` (the
preprocess stage's default, 256) as .npy files, then times `lookup` of the finished entry,
side by side in one run:
- stat (the default): every file's stat compared with the record, small files re-hashed;
- size: sizes only, small files re-hashed (the default before stats were recorded);
- full: every file re-hashed (read from the page cache where it fits; the first is cold);
- stat after one chunk is edited in place (numpy mmap r+, same size): that chunk re-hashed, the
  edit found (DamagedEntry), which `size` misses.
Each figure is the median of `--repeats` lookups; ratios are to `size`. The load average is
printed beside. The entry is written under --cache-dir (default a temporary folder, removed).

    python -m benchmarks.cache_verify                   # 50,000 images, 7.5 GB of disk
    python -m benchmarks.cache_verify --images 5000     # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from runner.artifacts import chunk_file
from runner.cache import (
    DamagedEntry,
    StageOutput,
    atomic_save_npy,
    atomic_write_text,
    lookup,
    run_cached,
)


def build(cache_dir: Path, images: int, chunk_size: int, crop: int) -> Path:
    def compute(folder: Path) -> StageOutput:
        rng = np.random.default_rng(0)
        for index, first in enumerate(range(0, images, chunk_size)):
            rows = min(chunk_size, images - first)
            atomic_save_npy(folder / chunk_file(index),
                            rng.integers(0, 256, (rows, crop, crop, 3), dtype=np.uint8))
        atomic_write_text(folder / "manifest.json", f'{{"images": {images}}}')
        return StageOutput(artifacts={"dataset": "."}, metrics={"images": float(images)})

    return run_cached(cache_dir, "preprocess", "benchmark", compute).path


def timed(cache_dir: Path, verify: str, repeats: int) -> tuple[float, str]:
    seconds, outcome = [], "hit"
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            lookup(cache_dir, "preprocess", "benchmark", verify)
        except DamagedEntry:
            outcome = "DamagedEntry (the edit found)"
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), outcome


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache-dir", default=None, help="default: a temporary folder, removed")
    args = parser.parse_args()
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="cache-verify-"))
    try:
        started = time.perf_counter()
        entry = build(cache_dir, args.images, args.chunk_size, args.crop)
        files = sorted(entry.glob("*.npy"))
        gigabytes = sum(f.stat().st_size for f in files) / 1e9
        print(f"entry: {args.images} images of {args.crop}x{args.crop}x3 uint8, {len(files)} "
              f"chunk files, {gigabytes:.2f} GB, written in {time.perf_counter() - started:.0f} s"
              f"; load {load()}")
        rows = []
        for verify in ("size", "stat", "full"):
            rows.append((verify, *timed(cache_dir, verify, args.repeats)))
        pixels = np.load(files[len(files) // 2], mmap_mode="r+")
        pixels[0, 0, 0, 0] ^= 1  # one byte, in place: same size, new mtime
        pixels.flush()
        del pixels
        rows.append(("stat, one chunk edited", *timed(cache_dir, "stat", args.repeats)))
        rows.append(("size, one chunk edited", *timed(cache_dir, "size", args.repeats)))
        base = rows[0][1]
        print(f"{'cache.verify':<24}{'lookup ms':>12}{'x size':>9}  outcome")
        for name, seconds, outcome in rows:
            print(f"{name:<24}{seconds * 1e3:>12.2f}{seconds / base:>9.2f}  {outcome}")
        print(f"median of {args.repeats} lookups each; load average (1/5/15 min) {load()}")
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
