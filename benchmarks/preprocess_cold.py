"""Preprocess from the disk vs from the page cache: the runner's stage over the same images.

    .venv/bin/python -m benchmarks.preprocess_cold --images 3000 --rounds 3 --model alexnet

One synthetic dataset (generated first, untimed), then per round three passes of
`runner.stages.preprocess.run` (default workers: one per core) into a fresh output folder, their
order rotated from round to round:
  cached             every image read once just before (common.read_once)
  disk               every image flushed and evicted from the page cache just before
                     (common.evict), as on a first run over ImageNet, or on this VM minutes after
                     the images were last read; the workers ask the kernel to read each piece's
                     files ahead (preprocess.read_ahead)
  disk, no read-ahead  the same, with read_ahead replaced by a no-op in the forked workers: what
                     read-ahead is worth (left out where workers are not forked, since the
                     replacement would not reach them)
Timer: time.perf_counter around the pass, after an untimed pass so that no timed one starts on
idle cores. Before each disk pass the share of the images' bytes still in the page cache is
checked (common.resident_fraction) and printed. Prints images/s per contender (median, per
round, load average after each pass, CPU stolen by the hypervisor) and the per-round ratios
disk/cached with their median; target: disk with read-ahead >= TARGET of cached.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import common
from runner.config import RunConfig
from runner.data import synthetic
from runner.stages import preprocess

TARGET = 0.90  # images/s from the disk / from the page cache, with read-ahead
EVICTED = 0.05  # at most this share of the images' bytes may still be cached for a disk pass


def cached(paths: list[Path]) -> float:
    common.read_once(paths)
    return common.resident_fraction(paths)


def from_disk(paths: list[Path]) -> float:
    os.sync()  # only clean pages can be evicted
    common.evict(paths)
    resident = common.resident_fraction(paths)
    if resident > EVICTED:
        raise SystemExit(f"{resident:.0%} of the images in {paths[0].parent} stay in the page "
                         "cache after eviction (a tmpfs?): pass --work on a disk-backed "
                         "filesystem")
    return resident


def one_pass(cfg: RunConfig, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    started = time.perf_counter()
    preprocess.run(preprocess.Settings.from_config(cfg), {}, out)
    return time.perf_counter() - started


def without_read_ahead(run: Callable[[], float]) -> float:
    """`run` with the workers' read-ahead a no-op: the forked workers inherit the replacement."""
    original = preprocess.read_ahead
    preprocess.read_ahead = lambda paths: None
    try:
        return run()
    finally:
        preprocess.read_ahead = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the images and outputs, on the disk to measure "
                        "(default: a temporary one)")
    args = parser.parse_args()
    forked = multiprocessing.get_start_method() == "fork"
    common.header("preprocess from the disk vs from the page cache", [
        f"{args.images} synthetic images, model {args.model}, {args.rounds} rounds, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start",
        "contenders: cached, disk" + (", disk without read-ahead" if forked else
                                     " (workers not forked: no run without read-ahead)")])
    with tempfile.TemporaryDirectory(prefix="preprocess-cold-", dir=args.work) as tmp:
        work = Path(tmp)
        cfg = common.run_config(f"model={args.model}", "dataset=synthetic",
                                f"dataset.root={work / 'images'}",
                                f"dataset.synthetic.num_images={args.images}",
                                f"paths.cache_dir={work / 'cache'}")
        assert cfg.dataset.synthetic is not None
        synthetic.generate(work / "images", cfg.dataset.images, cfg.dataset.labels,
                           cfg.dataset.synthetic)
        paths = sorted((work / "images" / cfg.dataset.images).iterdir())
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        print(f"   images: {len(paths)}, {megabytes:.0f} MB in {work}")
        out = work / "out"
        one_pass(cfg, out)  # untimed: the cores are busy when the first timed pass starts

        def timed() -> float:
            return one_pass(cfg, out)

        # name: (what is done to the page cache before the pass, the timed pass)
        contenders: dict[str, tuple[Callable[[list[Path]], float], Callable[[], float]]] = {
            "cached": (cached, timed), "disk": (from_disk, timed)}
        if forked:
            contenders["disk, no read-ahead"] = (from_disk, lambda: without_read_ahead(timed))
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        loads: dict[str, list[float]] = {name: [] for name in contenders}
        stolen: dict[str, list[float]] = {name: [] for name in contenders}
        resident: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                prepare, timed_pass = contenders[name]
                resident[name].append(prepare(paths))
                mark = common.cpu_mark()
                seconds[name].append(timed_pass())
                loads[name].append(os.getloadavg()[0])
                stolen[name].append(common.stolen_since(mark))

    n = len(paths)
    for name in names:
        rates = [n / s for s in seconds[name]]
        print(f"{name:<20} {statistics.median(rates):7.1f} images/s (per round "
              f"{[round(r) for r in rates]}, in the page cache before "
              f"{common.percents([100 * r for r in resident[name]])}, load "
              f"{[round(x, 2) for x in loads[name]]}, stolen {common.percents(stolen[name])})")
    for name in names[1:]:
        ratios = [c / d for c, d in zip(seconds["cached"], seconds[name], strict=True)]
        judged = (common.verdict(statistics.median(ratios), TARGET, higher_is_better=True)
                  if name == "disk" else "no target")
        print(f"{name} / cached images/s: median {statistics.median(ratios):.2f}, {judged} "
              f"(per round {[round(r, 2) for r in ratios]})")
    print(f"load average {os.getloadavg()[0]:.2f} at end; provisional: {os.cpu_count()} cores "
          "shared with other processes (load above)")


if __name__ == "__main__":
    main()
