"""Full-size runs: `stage=accuracy` over N generated images, at two sizes, side by side.

Each size is one `python -m runner` command (the CLI as a user runs it) on its own synthetic
dataset (generated, flushed to disk and evicted from the page cache just before, untimed: every
image is read from the disk, as on a first run over ImageNet), in a fresh stage cache,
watched from outside: the peak of the whole process tree's proportional resident memory (PSS of
the CLI and its decode workers: file-backed pages count, so memory-mapped reads are in it;
shared pages are not counted twice), sampled every 0.2 s; each stage's seconds from the run's
MLflow metrics; the command's user and kernel CPU seconds; the cache's bytes per stage. Printed
with the ratio of the two sizes and the load average.

    python -m benchmarks.full_size --sizes 5000 50000 --model alexnet --bs 64 [--parity-sample N]

The goal: peak memory flat in N (large / small <= 1.10) and time linear (per image alike).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks import common
from runner.config import PROJECT_ROOT
from runner.data import synthetic

STAGES = ("export", "convert", "preprocess", "infer", "reference", "parity", "evaluate")


def tree_pss_bytes(root: psutil.Process) -> int:
    """The process tree's memory: each process's PSS (its resident pages, a page shared by k
    processes counted 1/k in each, file-backed ones included), so forked decode workers sharing
    the parent's pages are not counted twice as summed RSS would."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:
            continue
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_size(images: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    cache, db = work / "cache", work / "mlflow.db"
    command = [sys.executable, "-m", "runner", f"model={args.model}", f"bs={args.bs}",
               "stage=accuracy", "dataset=synthetic", f"dataset.synthetic.num_images={images}",
               "model.weights=random", f"paths.cache_dir={cache}",
               f"mlflow.tracking_uri=sqlite:///{db}", f"mlflow.artifact_location={work}/mlruns",
               f"hydra.run.dir={work}/run"]
    if args.parity_sample:
        command.append(f"parity.sample={args.parity_sample}")
    # the synthetic images are generated first, where the run looks for them: making them is
    # not what is measured
    cfg = common.run_config(*command[3:-1])
    assert cfg.dataset.root is not None and cfg.dataset.synthetic is not None
    synthetic.generate(Path(cfg.dataset.root), cfg.dataset.images, cfg.dataset.labels,
                       cfg.dataset.synthetic)
    # ... written out, so that no writeback of theirs is timed, and evicted from the page cache,
    # so that both sizes read every image from the disk, as a first run over ImageNet does. (Read
    # once instead, to start both from the cache, 50,000 were partly evicted again by this VM
    # before preprocess reached them, 5,000 not: the two sizes started from different states.)
    images = sorted((Path(cfg.dataset.root) / cfg.dataset.images).iterdir())
    flush_started = time.perf_counter()
    os.sync()
    flush_s = time.perf_counter() - flush_started
    image_bytes = common.evict(images)
    resident = common.resident_fraction(images)
    peak = 0
    mark, started = common.cpu_mark(), time.perf_counter()
    cpu = common.cpu_seconds(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss_bytes(watched))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, stderr = process.communicate()
    done.set()
    watcher.join()
    wall, stolen = time.perf_counter() - started, common.stolen_since(mark)
    # the command's CPU seconds (its decode workers' included, as it waits for them), user and
    # kernel: where wall time grows faster than N and these do not, the time went to waiting
    user_s, kernel_s = common.cpu_since(cpu, resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"runner failed ({process.returncode}): {stderr[-2000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("runner").experiment_id])
    row = {"wall_s": wall, "peak_rss_mb": peak / 2**20, "load": os.getloadavg()[0],
           "stolen_pct": stolen, "flush_s": flush_s, "resident": resident,
           "image_mb": image_bytes / 2**20, "user_s": user_s, "kernel_s": kernel_s}
    for stage in STAGES:
        row[f"{stage}_s"] = run.data.metrics.get(f"time_{stage}_s", float("nan"))
        row[f"{stage}_mb"] = (folder_bytes(cache / stage) / 2**20
                              if (cache / stage).exists() else 0.0)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs=2, type=int, default=[5000, 50000])
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--parity-sample", type=int, default=0,
                        help="parity.sample (0: every image)")
    parser.add_argument("--work", default=None, help="a scratch folder (default: a temp dir)")
    args = parser.parse_args()
    common.header(f"stage=accuracy at {args.sizes[0]} and {args.sizes[1]} generated images", [
        f"model {args.model} (random weights), bs {args.bs}, chip cpu, parity.sample "
        f"{args.parity_sample or 'all'}; one CLI command per size, fresh cache "
        "(images generated, flushed to disk and evicted from the page cache before, not timed)",
        "peak memory: the process tree's summed PSS (file-backed pages included), every 0.2 s; "
        "stage seconds: the run's time_<stage>_s",
    ])
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        for size in args.sizes:
            work = Path(scratch) / f"n{size}"
            work.mkdir()
            rows.append(run_size(size, args, work))
            row = rows[-1]
            print(f"N={size}: wall {row['wall_s']:.0f} s, peak PSS {row['peak_rss_mb']:.0f} MB, "
                  f"load {row['load']:.2f}, CPU stolen by the hypervisor {row['stolen_pct']:.0f}% "
                  f"(before it: images flushed in {row['flush_s']:.1f} s, their "
                  f"{row['image_mb']:.0f} MB evicted from the page cache: {row['resident']:.0%} "
                  f"left); CPU "
                  f"user {row['user_s']:.0f} s, kernel {row['kernel_s']:.0f} s",
                  flush=True)
    small, large = rows
    ratio_images = args.sizes[1] / args.sizes[0]
    print(f"{'stage':<11}{'s @ small':>10}{'s @ large':>11}{'img/s large':>13}"
          f"{'time ratio':>12}{'MB @ large':>12}")
    for stage in STAGES:
        per_image = large[f"{stage}_s"] / small[f"{stage}_s"] if small[f"{stage}_s"] else 0
        rate = args.sizes[1] / large[f"{stage}_s"] if large[f"{stage}_s"] else 0
        print(f"{stage:<11}{small[f'{stage}_s']:>10.1f}{large[f'{stage}_s']:>11.1f}"
              f"{rate:>13.1f}{per_image:>12.2f}{large[f'{stage}_mb']:>12.1f}")
    rss_ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    print(f"peak PSS {small['peak_rss_mb']:.0f} -> {large['peak_rss_mb']:.0f} MB: ratio "
          f"{rss_ratio:.3f}, {common.verdict(rss_ratio, 1.10, higher_is_better=False)}")
    for kind in ("user", "kernel"):
        print(f"CPU {kind} {small[f'{kind}_s']:.0f} -> {large[f'{kind}_s']:.0f} s: ratio "
              f"{large[f'{kind}_s'] / max(small[f'{kind}_s'], 1e-9):.2f}")
    print(f"wall {small['wall_s']:.0f} -> {large['wall_s']:.0f} s: ratio "
          f"{large['wall_s'] / small['wall_s']:.2f} for {ratio_images:.0f}x the images "
          f"(linear: {ratio_images:.0f}); load {small['load']:.2f} / {large['load']:.2f}")


if __name__ == "__main__":
    main()
