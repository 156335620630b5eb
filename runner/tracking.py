"""MLflow: one run per job, with the config as params and artifacts, metrics named the same in
every run (so runs compare), tags that say what was run where, and the right end status."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from runner import environment
from runner.config import MlflowConfig, RunConfig
from runner.models import weights
from runner.pipeline import StageRecord

log = logging.getLogger("runner")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}


def experiment_id(settings: MlflowConfig) -> str:
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(settings.artifact_location)
    uri = location.as_uri() if location.is_absolute() else settings.artifact_location
    return client.create_experiment(settings.experiment, artifact_location=uri)


def run_tags(cfg: RunConfig) -> dict[str, str]:
    src = weights.source(cfg.model)
    tags = {
        "model": cfg.model.name,
        "chip": cfg.chip.name,
        "bs": str(cfg.bs),
        "dataset": cfg.dataset.name,
        "stages": ",".join(cfg.stage.stages),
        "weights": weights.identity(src, cfg.seed),
        "weights_kind": src.kind,
        "git_commit": environment.git_commit(),
    }
    if src.is_random:
        tags["accuracy_note"] = "random weights: accuracy is meaningless"
    tags.update({f"env.{k}": str(v) for k, v in environment.capture(cfg.chip).items()})
    return tags


def log_stage(record: StageRecord) -> None:
    output = record.entry.output
    mlflow.log_metrics({**output.metrics, f"time_{record.name}_s": record.seconds})
    mlflow.set_tag(f"cache.{record.name}", "hit" if record.entry.hit else "miss")
    mlflow.set_tag(f"cache_key.{record.name}", record.entry.key)
    for relative in output.artifacts.values():
        path = record.entry.path / relative
        if path.is_file() and path.stat().st_size < 8 << 20 and path.suffix == ".json":
            mlflow.log_artifact(str(path), artifact_path=f"stages/{record.name}")
    if output.info:
        mlflow.log_dict(output.info, f"stages/{record.name}/info.json")


@contextmanager
def tracked_run(cfg: RunConfig, config_tree: dict[str, Any], run_dir: Path) -> Iterator[str]:
    """An active MLflow run; FINISHED on success, FAILED (KILLED on Ctrl-C) with the error."""
    run = mlflow.start_run(
        experiment_id=experiment_id(cfg.mlflow),
        run_name=f"{cfg.model.name}-{cfg.chip.name}-bs{cfg.bs}",
        tags=run_tags(cfg),
    )
    try:
        params = {k: json.dumps(v) if isinstance(v, list | dict) else v
                  for k, v in flatten(config_tree).items()}
        mlflow.log_params(params)
        mlflow.log_dict(config_tree, "config/config.yaml")
        hydra_dir = run_dir / ".hydra"
        if hydra_dir.is_dir():
            mlflow.log_artifacts(str(hydra_dir), artifact_path="config/hydra")
        yield run.info.run_id
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
        _log_file(run_dir)
        mlflow.end_run(status)
        raise
    else:
        _log_file(run_dir)
        mlflow.end_run("FINISHED")


def _log_file(run_dir: Path) -> None:
    for path in run_dir.glob("*.log"):
        mlflow.log_artifact(str(path), artifact_path="logs")
