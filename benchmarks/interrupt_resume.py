"""Interrupt a real run mid-preprocess, resume it, and time how errors are reported.

Measured side by side in one run, on generated photo-sized JPEGs (2000x1500), with real
`python -m runner` processes and a SQLite MLflow store in a temporary folder:

  stop     seconds from SIGTERM to the runner's exit (time.monotonic around the signal and
           Popen.wait), sent once half the preprocess chunks are in the cache
  resume   preprocess seconds (the run's `time_preprocess_s` metric, perf_counter around the
           stage) of the resumed run / of an uninterrupted run on another cache, next to the
           fraction of chunks the resumed run had left to compute
  tracking seconds until an unreachable MLflow server (a free port on 127.0.0.1) is reported:
           the whole runner CLI (imports included) vs the MLflow client alone
           (get_experiment_by_name, MLflow's default retries), capped at --cap seconds

usage: .venv/bin/python benchmarks/interrupt_resume.py [--images 160] [--chunk 8] [--cap 300]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_record(tracking_uri: str, run_id: str) -> dict:
    """The run's run.json (runner.tracking.run_record; this script runs without the package)."""
    import mlflow.artifacts

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="run.json",
                                               tracking_uri=tracking_uri)
    return json.loads(Path(path).read_text())


def make_images(root: Path, count: int) -> Path:
    (root / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1500, 0:2000].astype(np.float32)
    pixels = np.stack([127 + 100 * np.sin((x + y / 3) / 97 + k) + rng.normal(0, 20, x.shape)
                       for k in range(3)], axis=-1)
    first = root / "val" / "img_1.JPEG"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(first, quality=92)
    names = [f"img_{i}.JPEG" for i in range(1, count + 1)]
    for name in names[1:]:
        shutil.copyfile(first, root / "val" / name)
    (root / "val_label.txt").write_text("".join(f"{n} {i % 1000}\n" for i, n in enumerate(names)))
    return root


def command(work: Path, cache: str, data: Path, chunk: int) -> list[str]:
    return [sys.executable, "-m", "runner", "stage.stages=[preprocess]", "model.weights=random",
            f"dataset.root={data}", f"preprocess.chunk_size={chunk}", "preprocess.workers=1",
            f"paths.cache_dir={work / cache}",
            f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            f"mlflow.artifact_location={work / 'mlruns'}", f"hydra.run.dir={work}/runs/{cache}"]


def last_run(work: Path) -> object:
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("runner")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                              max_results=1)[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--cap", type=float, default=300.0)
    args = parser.parse_args()
    total = -(-args.images // args.chunk)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_images(work / "data", args.images)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        subprocess.run(command(work, "fresh", data, args.chunk), cwd=ROOT, env=env, check=True,
                       capture_output=True)
        fresh_s = last_run(work).data.metrics["time_preprocess_s"]

        runner = subprocess.Popen(command(work, "resumed", data, args.chunk), cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(list((work / "resumed").glob("preprocess/*.partial/chunk_*.npy"))) < total // 2:
            if runner.poll() is not None:
                raise SystemExit("the run ended before it could be interrupted")
            time.sleep(0.01)
        sent = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        status = runner.wait()
        stop_s = time.monotonic() - sent
        interrupted = last_run(work).info.status

        subprocess.run(command(work, "resumed", data, args.chunk), cwd=ROOT, env=env,
                       check=True, capture_output=True)
        resumed = last_run(work)
        resumed_s = resumed.data.metrics["time_preprocess_s"]
        key = run_record(f"sqlite:///{work / 'mlflow.db'}",
                         resumed.info.run_id)["stages"]["preprocess"]["key"]
        info = json.loads((work / "resumed" / "preprocess" / key / "result.json").read_text())
        kept = info["info"]["resumed_chunks"]

        uri = f"http://127.0.0.1:{free_port()}"
        started = time.monotonic()
        subprocess.run([*command(work, "tracking", data, args.chunk),
                        f"mlflow.tracking_uri={uri}"], cwd=ROOT, env=env, capture_output=True)
        probe_s = time.monotonic() - started
        started = time.monotonic()
        client_only = (f"from mlflow.tracking import MlflowClient; "
                       f"MlflowClient(tracking_uri='{uri}').get_experiment_by_name('runner')")
        try:
            subprocess.run([sys.executable, "-c", client_only], env=env, capture_output=True,
                           timeout=args.cap)
            client_s = f"{time.monotonic() - started:.1f} s"
        except subprocess.TimeoutExpired:
            client_s = f"> {args.cap:.0f} s (capped)"

    print(f"{args.images} images of 2000x1500, {total} chunks of {args.chunk}, 1 decode worker, "
          f"{os.cpu_count()} cores")
    print(f"stop:     SIGTERM -> exit {stop_s:.2f} s (exit status {status}, MLflow run "
          f"{interrupted})")
    print(f"resume:   kept {kept}/{total} chunks; preprocess {resumed_s:.1f} s resumed vs "
          f"{fresh_s:.1f} s uninterrupted = {resumed_s / fresh_s:.2f} "
          f"(chunks left to compute: {(total - kept) / total:.2f})")
    print(f"tracking: unreachable server reported after {probe_s:.1f} s by the runner CLI "
          f"(imports included) vs {client_s} by the MLflow client alone")


if __name__ == "__main__":
    main()
