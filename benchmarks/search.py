"""The constrained search against the exhaustive sweep on the same grid (issue 34, part 3).

    .venv/bin/python benchmarks/search.py [--bs 1 2 4 8 16 32 64] [--max-p99-ms 250]
                                          [--n-trials 10] [--workspace DIR]

On one grid (AlexNet, random weights, stage=performance, bs x chip.precision fp32/int8 on the
CPU), in one fresh workspace:
  1. prepare: export and convert for each precision (not timed: both sweeps reuse them),
  2. exhaustive: `-m bs=... chip.precision=fp32,int8 search.max_p99_ms=X` (the basic sweeper,
     every setting once, each run judged as a trial),
  3. replay: `-m experiment=search_cpu` on the same grid and budget (optuna's seeded TPE,
     --n-trials trials) with cache.reuse_measurements=true, so every trial reads the
     exhaustive sweep's own figure: the sampler alone decides, without timing noise,
  4. search: the same search, each trial measured anew (what a user runs).
Prints each one's best feasible setting (the parent run's `search.best` tag), whether the
searches match the exhaustive sweep, the trials and distinct settings each used, wall seconds,
and the load average before and after each (a 2-core VM shared with others: close calls between
settings can go either way when figures are remeasured; the replay shows what the sampler finds
on identical figures).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
# a short benchmark: few calls per setting, so the whole grid fits minutes on 2 cores
BENCHMARK = ("benchmark.warmup_iters=2", "benchmark.warmup_min_s=0.2", "benchmark.min_iters=10",
             "benchmark.min_duration_s=1", "benchmark.repeats=2", "benchmark.max_trials=1")
GRID = ("model=alexnet", "model.weights=random", "dataset=synthetic",
        "dataset.synthetic.num_images=16", "chip.calibration.num_images=16")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def sweep(workspace: Path, *args: str) -> tuple[float, str, str]:
    """One `python -m runner -m ...`: wall seconds and the load average before and after."""
    command = [sys.executable, "-m", "runner", "-m", *GRID, *args,
               f"paths.cache_dir={workspace / 'cache'}",
               f"mlflow.tracking_uri=sqlite:///{workspace / 'mlflow.db'}",
               f"mlflow.artifact_location={workspace / 'mlruns'}",
               f"hydra.sweep.dir={workspace}/multirun/${{now:%H-%M-%S-%f}}"]
    before = load()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        raise SystemExit(f"the sweep exited {done.returncode}: {' '.join(args)}")
    return seconds, before, load()


def last_parent(workspace: Path) -> tuple[dict[str, str], dict[str, float], list]:
    """The latest sweep's parent tags and metrics, and its children."""
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("runner")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    parent = [r for r in runs if r.data.tags.get("sweep.role") == "parent"][-1]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent.data.tags, parent.data.metrics, children


def setting(text: str) -> dict[str, str]:
    return dict(part.partition("=")[::2] for part in text.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bs", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--max-p99-ms", type=float, default=250.0,
                        help="search.max_p99_ms: chosen so that some settings exceed it here")
    parser.add_argument("--n-trials", type=int, default=10, help="the search's trials")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="cache and MLflow store (default: a new temporary folder)")
    args = parser.parse_args()
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="search-bench-"))
    sizes, precisions = ",".join(map(str, args.bs)), ",".join(args.precisions)
    budget = f"search.max_p99_ms={args.max_p99_ms:g}"
    grid_size = len(args.bs) * len(args.precisions)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    print(f"== constrained search vs exhaustive sweep: commit {commit}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}, workspace {workspace}")
    print(f"   grid: AlexNet (random weights) on the CPU, stage=performance, bs {sizes} x "
          f"chip.precision {precisions} = {grid_size} settings; budget {budget}; "
          f"benchmark {' '.join(b.removeprefix('benchmark.') for b in BENCHMARK)}")

    seconds, before, after = sweep(workspace, f"chip.precision={precisions}", "bs=1",
                                   "stage.stages=[export,convert]")
    print(f"prepare: export + convert per precision in {seconds:.0f} s (load {before} -> "
          f"{after})")
    results = {}
    trials = f"hydra.sweeper.n_trials={args.n_trials}"
    runs = {
        "exhaustive": ("stage=performance", f"bs={sizes}", f"chip.precision={precisions}",
                       budget, *BENCHMARK),
        "replay": ("experiment=search_cpu", "stage=performance", f"bs=choice({sizes})",
                   f"chip.precision=choice({precisions})", trials,
                   budget, "cache.reuse_measurements=true", *BENCHMARK),
        "search": ("experiment=search_cpu", "stage=performance", f"bs=choice({sizes})",
                   f"chip.precision=choice({precisions})", trials,
                   budget, *BENCHMARK),
    }
    for name, overrides in runs.items():
        seconds, before, after = sweep(workspace, *overrides)
        tags, metrics, children = last_parent(workspace)
        distinct = {tuple(sorted(c.data.params.get(k, "?") for k in ("bs", "chip.precision")))
                    for c in children}
        best = tags.get("search.best", "?")
        fps = metrics.get("search_best_throughput_fps")
        best_run = next((c for c in children if c.info.run_id == tags.get("search.best_run")),
                        None)
        p99 = best_run.data.metrics.get("latency_ms_p99") if best_run else None
        feasible = int(metrics.get("search_feasible_trials", 0))
        results[name] = best
        figure = (f": {fps:.1f} images/s, p99 {p99:.1f} ms" if fps is not None and p99 is not None
                  else "")
        print(f"{name}: best feasible {best}{figure}; {len(children)} trials, {len(distinct)} "
              f"distinct settings, {feasible} feasible; {seconds:.0f} s (load {before} -> "
              f"{after})")
        ranked = sorted((c for c in children if c.data.tags.get("search.feasible") == "yes"),
                        key=lambda c: -c.data.metrics.get("throughput_fps", 0.0))
        print("   feasible, fastest first: " + ", ".join(
            f"bs={c.data.params['bs']} {c.data.params['chip.precision']} "
            f"{c.data.metrics.get('throughput_fps', 0.0):.1f}" for c in ranked[:4]))
    for name in ("search", "replay"):
        same = setting(results[name]) == setting(results["exhaustive"])
        print(f"{name} vs exhaustive: {'SAME' if same else 'DIFFERENT'} best feasible setting")
    print(f"reports: the parent runs in sqlite:///{workspace / 'mlflow.db'}, and "
          f"{workspace}/multirun/*/sweep/report.md")


if __name__ == "__main__":
    main()
