"""`python -m runner` end to end: every stage, a real MLflow store, caches across batch sizes."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from runner.artifacts import PreprocessedDataset, load_logits
from tests.conftest import SAMPLE_ROOT, Workspace, needs_sample

METRICS = ("top1", "top2", "top3", "top4", "top5", "throughput_fps", "latency_ms_p50",
           "latency_ms_p90", "latency_ms_p99", *(f"time_{s}_s" for s in (
               "export", "convert", "preprocess", "infer", "reference", "parity", "evaluate",
               "benchmark", "e2e")),
           "wall_fps", "throughput_cv", "benchmark_stable", "benchmark_valid", "e2e_fps",
           *(f"e2e_{part}_{unit}" for part in ("read", "preprocess", "infer", "post")
             for unit in ("fps", "ms")))

pytestmark = pytest.mark.slow


def _entry(space: Workspace, stage: str, run) -> Path:
    return space.entry(stage, run)


def _check_finished_run(space: Workspace, run, num_images: int) -> None:
    assert run.info.status == "FINISHED"
    assert set(METRICS) <= set(run.data.metrics)
    assert "bs" not in run.data.tags  # a param only: named once
    assert run.data.tags["weights"] == "random(seed=0)"
    assert run.data.tags["accuracy_note"].startswith("random weights")
    assert run.data.tags["git_commit"]
    # top-k recomputed independently (torch.topk) from the saved logits and labels
    logits = torch.from_numpy(load_logits(_entry(space, "infer", run) / "logits.json"))
    labels = torch.from_numpy(PreprocessedDataset(_entry(space, "preprocess", run)).labels)
    assert len(labels) == logits.shape[0] == num_images
    top5 = logits.topk(5, dim=1).indices
    for k in range(1, 6):
        expected = 100.0 * (top5[:, :k] == labels[:, None]).any(1).double().mean().item()
        assert run.data.metrics[f"top{k}"] == pytest.approx(expected, abs=1e-9)
    assert run.data.metrics["e2e_images"] == num_images
    assert run.data.metrics["e2e_fps"] == pytest.approx(num_images / run.data.metrics["e2e_wall_s"])
    assert run.data.metrics["benchmark_repeats"] == 3  # the default: throughput_cv over 3 runs
    guide = json.loads((_entry(space, "evaluate", run) / "metrics.json").read_text())
    assert guide["value"][0] == {"key": "Number of images", "value": str(num_images)}
    artifacts = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, tracking_uri=space.tracking_uri)
    assert (Path(artifacts) / "stages" / "evaluate" / "metrics.json").is_file()
    assert (Path(artifacts) / "config" / "config.yaml").is_file()
    assert (Path(artifacts) / "config" / "hydra" / "overrides.yaml").is_file()
    assert list((Path(artifacts) / "logs").glob("*.log"))


def test_all_stages_then_another_bs_reuses_export_and_preprocess(
    workspace: Workspace, fast_benchmark: tuple[str, ...]
) -> None:
    # images of their own (seed 11): the cache is the session's, and another test's run of the
    # same images at bs=8 (test_parity's) would make this run's infer a hit, in whichever order
    # the xdist worker takes the files
    common = ["model=alexnet", "dataset=synthetic", "dataset.synthetic.num_images=24",
              "dataset.synthetic.seed=11", "model.weights=random", *fast_benchmark]
    first = workspace.run("bs=4", *common)
    assert "top1=" in first.stdout and "throughput_fps=" in first.stdout
    second = workspace.run("bs=8", *common)
    runs = workspace.runs()
    assert len(runs) == 2
    for run in runs:
        _check_finished_run(workspace, run, num_images=24)
    later = runs[1]
    assert later.data.params["bs"] == "8"
    cache = workspace.cache_states(later)
    assert (cache["export"], cache["preprocess"], cache["infer"]) == ("hit", "hit", "miss")
    assert later.data.tags["cache"] == f"{list(cache.values()).count('hit')}/{len(cache)} hit"
    assert "preprocess hit" in " ".join(second.stdout.split())
    assert later.data.metrics["top1"] == pytest.approx(runs[0].data.metrics["top1"])


@needs_sample
def test_real_sample_images_end_to_end(workspace: Workspace,
                                       fast_benchmark: tuple[str, ...]) -> None:
    workspace.run("model=alexnet", "bs=16", "dataset=imagenet_sample", "model.weights=random",
                  f"dataset.root={SAMPLE_ROOT}", *fast_benchmark)
    (run,) = workspace.runs()
    _check_finished_run(workspace, run, num_images=100)
    logits = load_logits(_entry(workspace, "infer", run) / "logits.json")
    assert np.isfinite(logits).all() and logits.shape == (100, 1000)


def test_a_bad_dataset_fails_in_one_line_before_any_run(workspace: Workspace,
                                                        tmp_path: Path) -> None:
    result = workspace.run("model.weights=random", "stage=accuracy",
                           f"dataset.root={tmp_path / 'nowhere'}", check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("runner: error:")]
    assert "nowhere/val does not exist" in line
    assert workspace.runs() == []  # found before any work: no MLflow run was started
