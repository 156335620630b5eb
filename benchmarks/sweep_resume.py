"""The same sweep twice in a fresh workspace: the second run finds every stage in the cache.

    .venv/bin/python benchmarks/sweep_resume.py [extra overrides, e.g. bs=1,4,16]

Prints, for each run, the wall seconds of the whole command (process start, Hydra, MLflow
logging included: what a user waits for) and the sum over its jobs of the stage seconds the runs
logged (`time_<stage>_s`: cache lookups on the second run), then the ratios of second to first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def run_record(tracking_uri: str, run_id: str) -> dict:
    """The run's run.json (runner.tracking.run_record; this script runs without the package)."""
    import mlflow.artifacts

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="run.json",
                                               tracking_uri=tracking_uri)
    return json.loads(Path(path).read_text())


SWEEP = ["model=alexnet", "bs=1,4", "dataset=synthetic", "dataset.synthetic.num_images=64",
         "model.weights=random"]
STAGES = ("export", "convert", "preprocess", "infer", "evaluate", "benchmark")


def run_sweep(workspace: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "runner", "-m", *SWEEP, *extra,
               f"paths.cache_dir={workspace / 'cache'}",
               f"mlflow.tracking_uri=sqlite:///{workspace / 'mlflow.db'}",
               f"mlflow.artifact_location={workspace / 'mlruns'}",
               f"hydra.sweep.dir={workspace}/multirun/${{now:%H-%M-%S-%f}}"]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def stage_seconds(workspace: Path) -> list[tuple[float, int, int]]:
    """Per sweep, in order: (sum of the jobs' stage seconds, stage cache hits, stages)."""
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("runner")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    totals = []
    for parent in parents:
        jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        seconds = sum(r.data.metrics.get(f"time_{s}_s", 0.0) for r in jobs for s in STAGES)
        records = [run_record(client.tracking_uri, r.info.run_id)["stages"] for r in jobs]
        cache = [record[s]["cache"] for record in records for s in STAGES if s in record]
        totals.append((seconds, cache.count("hit"), len(cache)))
    return totals


def main() -> None:
    extra = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="sweep-resume-") as tmp:
        workspace = Path(tmp)
        walls = [run_sweep(workspace, extra), run_sweep(workspace, extra)]
        stages = stage_seconds(workspace)
    print(f"sweep: {' '.join(SWEEP + extra)} (default benchmark settings)")
    print(f"{'run':<8}{'wall s':>10}{'stage s':>10}{'cache hits':>12}")
    for name, wall, (seconds, hits, total) in zip(("first", "second"), walls, stages,
                                                  strict=True):
        print(f"{name:<8}{wall:>10.2f}{seconds:>10.2f}{f'{hits}/{total}':>12}")
    print(f"second/first: wall {walls[1] / walls[0]:.3f}, "
          f"stage seconds {stages[1][0] / stages[0][0]:.4f}")


if __name__ == "__main__":
    main()
