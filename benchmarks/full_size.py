"""Full-size runs: `stage=accuracy` over N generated images, at two sizes, side by side.

Each size's synthetic dataset is generated once, first (untimed). Each command is one
`python -m runner` (the CLI as a user runs it) over one size's images, which are flushed to disk
and evicted from the page cache just before (untimed: every image is read from the disk, as on a
first run over ImageNet), in a fresh stage cache, watched from outside: the peak of the whole
process tree's proportional resident memory (PSS of the CLI and its decode workers: file-backed
pages count, so memory-mapped reads are in it; shared pages are not counted twice), sampled
every 0.2 s; each stage's seconds from the run's MLflow metrics; the command's user and kernel
CPU seconds; the cache's bytes per stage; what the disk holding the work folder read, wrote and
how much of each stage's time it was busy (/proc/diskstats every 0.2 s, stage windows from the
run's log), to tell a stage that grows faster than N because it waits on the disk from one whose
own work does. `--rounds R` runs R commands per size, the sizes' order swapped each round (small
large, large small, ...), and prints medians with each round's per-image ratio: one command per
size cannot tell a stage's growth from this VM's drift. Printed with the ratios and the load
average.

    python -m benchmarks.full_size --sizes 5000 50000 --model alexnet --bs 64 [--parity-sample N]
    python -m benchmarks.full_size --stages export convert preprocess --rounds 3

The goals: peak memory flat in N (the worst peak at the large size / at the small <= 1.10) and
time linear (each stage's seconds per image, large / small, <= LINEAR).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil

from benchmarks import common
from runner.config import PROJECT_ROOT
from runner.data import synthetic
from runner.memory import tree_pss_bytes

STAGES = ("export", "convert", "preprocess", "infer", "reference", "parity", "evaluate")
# time linear: a stage's seconds per image at the larger size over those at the smaller
LINEAR = 1.10


def disk_of(folder: Path) -> tuple[int, int]:
    """(major, minor) of the device holding `folder`."""
    device = os.stat(folder).st_dev
    return os.major(device), os.minor(device)


def disk_counters(device: tuple[int, int]) -> tuple[str, tuple[float, float, float]] | None:
    """The block device `device`'s name and (MB read, MB written, ms busy) so far, from
    /proc/diskstats (sectors of 512 bytes; busy: time with a request in flight); None for a
    folder on no block device (tmpfs, overlay)."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if (int(fields[0]), int(fields[1])) == device:
            return fields[2], (int(fields[5]) * 512 / 1e6, int(fields[9]) * 512 / 1e6,
                               float(fields[12]))
    return None


LOG_LINE = re.compile(r"^\[(?P<at>[\d-]+ [\d:,]+)\]\[runner\]\[INFO\] - (?P<stage>\w+): "
                      r"(?P<event>key|done in|cache hit in) ")


def stage_windows(log: Path) -> dict[str, tuple[float, float]]:
    """Each stage's (start, end) in epoch seconds, from the run's log: the pipeline logs
    "<stage>: key ..." as a stage starts and "<stage>: done in ..." as it ends."""
    starts: dict[str, float] = {}
    windows: dict[str, tuple[float, float]] = {}
    for line in log.read_text().splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if match["event"] == "key":
            starts[match["stage"]] = at
        elif match["stage"] in starts:
            windows[match["stage"]] = (starts[match["stage"]], at)
    return windows


def disk_per_stage(samples: list[tuple[float, tuple[float, float, float]]],
                   windows: dict[str, tuple[float, float]]) -> dict[str, tuple[float, ...]]:
    """stage: (MB read, MB written, % of its time the disk was busy), between the first and the
    last counter samples taken inside the stage (every 0.2 s: stages under 0.4 s have none)."""
    per_stage = {}
    for stage, (start, end) in windows.items():
        inside = [(at, counters) for at, counters in samples if start <= at <= end]
        if len(inside) < 2:
            continue
        (first_at, first), (last_at, last) = inside[0], inside[-1]
        read, written, busy_ms = (b - a for a, b in zip(first, last, strict=True))
        per_stage[stage] = (read, written, 100 * busy_ms / 1000 / (last_at - first_at))
    return per_stage


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def generate_images(size: int, args: argparse.Namespace, root: Path) -> Path:
    """The synthetic dataset of `size` images a command at that size reads, at `root` (making
    it is not what is measured); the folder of its images."""
    cfg = common.run_config(f"model={args.model}", "dataset=synthetic",
                            f"dataset.synthetic.num_images={size}", f"dataset.root={root}")
    assert cfg.dataset.synthetic is not None
    synthetic.generate(root, cfg.dataset.images, cfg.dataset.labels, cfg.dataset.synthetic)
    return root / cfg.dataset.images


def run_size(images: int, args: argparse.Namespace, root: Path, image_dir: Path,
             work: Path) -> tuple[dict[str, float], dict[str, tuple[float, ...]]]:
    """One CLI command over the `images` generated at `root`, in a fresh cache under `work`."""
    cache, db = work / "cache", work / "mlflow.db"
    command = [sys.executable, "-m", "runner", f"model={args.model}", f"bs={args.bs}",
               "stage=accuracy", f"stage.stages=[{','.join(args.stages)}]", "dataset=synthetic",
               f"dataset.synthetic.num_images={images}", f"dataset.root={root}",
               "model.weights=random", f"paths.cache_dir={cache}",
               f"mlflow.tracking_uri=sqlite:///{db}", f"mlflow.artifact_location={work}/mlruns",
               f"hydra.run.dir={work}/run"]
    if args.parity_sample:
        command.append(f"parity.sample={args.parity_sample}")
    # written out, so that no writeback of theirs is timed, and evicted from the page cache, so
    # that both sizes read every image from the disk, as a first run over ImageNet does. (Read
    # once instead, to start both from the cache, 50,000 were partly evicted again by this VM
    # before preprocess reached them, 5,000 not: the two sizes started from different states.)
    image_files = sorted(image_dir.iterdir())
    flush_started = time.perf_counter()
    os.sync()
    flush_s = time.perf_counter() - flush_started
    image_bytes = common.evict(image_files)
    resident = common.resident_fraction(image_files)
    device = disk_of(work)
    disk: list[tuple[float, tuple[float, float, float]]] = []
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
            counters = disk_counters(device)
            if counters is not None:
                disk.append((time.time(), counters[1]))
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
    for stage in args.stages:
        row[f"{stage}_s"] = run.data.metrics.get(f"time_{stage}_s", float("nan"))
        row[f"{stage}_mb"] = (folder_bytes(cache / stage) / 2**20
                              if (cache / stage).exists() else 0.0)
    return row, disk_per_stage(disk, stage_windows(work / "run" / "runner.log"))


def median_of(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs=2, type=int, default=[5000, 50000])
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--parity-sample", type=int, default=0,
                        help="parity.sample (0: every image)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="the stages each command runs (stage.stages), in order; default: "
                        "all of stage=accuracy")
    parser.add_argument("--rounds", type=int, default=1,
                        help="commands per size, the sizes' order swapped each round; medians")
    parser.add_argument("--work", default=None, help="a scratch folder (default: a temp dir)")
    args = parser.parse_args()
    small_n, large_n = args.sizes
    if not 0 < small_n < large_n:
        parser.error(f"--sizes {small_n} {large_n}: two sizes, the smaller first, both > 0")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least 1")
    common.header(f"stage=accuracy at {small_n} and {large_n} generated images", [
        f"model {args.model} (random weights), bs {args.bs}, chip cpu, parity.sample "
        f"{args.parity_sample or 'all'}, stages {' '.join(args.stages)}; {args.rounds} round(s) "
        "of one CLI command per size (the order swapped each round), each in a fresh cache; "
        "each size's images generated once before the first round, then before each command "
        "flushed to disk and evicted from the page cache (not timed)",
        "peak memory: the process tree's summed PSS (file-backed pages included), every 0.2 s; "
        "stage seconds: the run's time_<stage>_s; with rounds, the median of each figure",
    ])
    rows: dict[int, list[dict[str, float]]] = {small_n: [], large_n: []}
    disks: dict[int, list[dict[str, tuple[float, ...]]]] = {small_n: [], large_n: []}
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        device = disk_counters(disk_of(Path(scratch)))
        roots = {size: Path(scratch) / f"images-{size}" for size in args.sizes}
        image_dirs = {size: generate_images(size, args, root) for size, root in roots.items()}
        for round_index in range(args.rounds):
            order = args.sizes if round_index % 2 == 0 else args.sizes[::-1]
            for size in order:
                work = Path(scratch) / f"n{size}-round{round_index + 1}"
                work.mkdir()
                row, disk = run_size(size, args, roots[size], image_dirs[size], work)
                shutil.rmtree(work)  # a 50,000-image cache is gigabytes: one at a time
                rows[size].append(row)
                disks[size].append(disk)
                print(f"N={size}: wall {row['wall_s']:.0f} s, peak PSS "
                      f"{row['peak_rss_mb']:.0f} MB, load {row['load']:.2f}, CPU stolen by the "
                      f"hypervisor {row['stolen_pct']:.0f}% (before it: images flushed in "
                      f"{row['flush_s']:.1f} s, their {row['image_mb']:.0f} MB evicted from the "
                      f"page cache: {row['resident']:.0%} left); CPU user {row['user_s']:.0f} s, "
                      f"kernel {row['kernel_s']:.0f} s; " + " ".join(
                          f"{stage} {row[f'{stage}_s']:.1f}" for stage in args.stages) + " s",
                      flush=True)
    small, large = rows[small_n], rows[large_n]
    ratio_images = large_n / small_n
    print(f"{'stage':<11}{'s @ small':>10}{'s @ large':>11}{'img/s large':>13}"
          f"{'time ratio':>12}{'MB @ large':>12}   per-image time large/small")
    for stage in args.stages:
        small_s, large_s = median_of(small, f"{stage}_s"), median_of(large, f"{stage}_s")
        ratio = large_s / small_s if small_s else 0
        rate = large_n / large_s if large_s else 0
        # per image, each round's pair: linear is 1.0; a fixed cost (export) is below it
        per_round = " ".join(f"{b[f'{stage}_s'] / a[f'{stage}_s'] / ratio_images:.2f}"
                             for a, b in zip(small, large, strict=True) if a[f"{stage}_s"])
        print(f"{stage:<11}{small_s:>10.1f}{large_s:>11.1f}{rate:>13.1f}{ratio:>12.2f}"
              f"{median_of(large, f'{stage}_mb'):>12.1f}   {per_round} "
              f"{common.verdict(ratio / ratio_images, LINEAR, higher_is_better=False)}")
    if device is None or not all(disks[large_n]):
        print("disk per stage: not measured (the work folder is on no block device)")
    else:
        print(f"disk {device[0]} during each stage, MB read / MB written / % of the time a "
              "request was in flight (100%: waiting on the disk; medians over rounds):")
        for stage in args.stages:
            cells = []
            for size in args.sizes:
                seen = [d[stage] for d in disks[size] if stage in d]
                cells.append(" / ".join(f"{statistics.median(v[i] for v in seen):.0f}"
                                        for i in range(3)) + "%" if seen else "-")
            print(f"{stage:<11}{cells[0]:>24}{cells[1]:>24}")
    # the worst peak of each size: memory must stay flat in every round, not in the median
    small_peak = max(row["peak_rss_mb"] for row in small)
    large_peak = max(row["peak_rss_mb"] for row in large)
    print(f"peak PSS {small_peak:.0f} -> {large_peak:.0f} MB: ratio "
          f"{large_peak / small_peak:.3f}, "
          f"{common.verdict(large_peak / small_peak, 1.10, higher_is_better=False)}")
    for kind in ("user", "kernel"):
        small_cpu, large_cpu = median_of(small, f"{kind}_s"), median_of(large, f"{kind}_s")
        print(f"CPU {kind} {small_cpu:.0f} -> {large_cpu:.0f} s: ratio "
              f"{large_cpu / max(small_cpu, 1e-9):.2f}")
    small_wall, large_wall = median_of(small, "wall_s"), median_of(large, "wall_s")
    loads = sorted(row["load"] for row in small + large)
    print(f"wall {small_wall:.0f} -> {large_wall:.0f} s: ratio {large_wall / small_wall:.2f} "
          f"for {ratio_images:.0f}x the images (linear: {ratio_images:.0f}); load "
          f"{loads[0]:.2f}-{loads[-1]:.2f}")


if __name__ == "__main__":
    main()
