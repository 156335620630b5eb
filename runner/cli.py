"""`python -m runner`: compose the config with Hydra, run the pipeline, track it in MLflow."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runner import config, pipeline, sweep, tracking
from runner.errors import ConfigError, RunnerError

log = logging.getLogger("runner")

config.register()

SUMMARY_METRICS = ("top1", "top5", "throughput_fps", "latency_ms_p50", "latency_ms_p99")


def summary_table(cfg: config.RunConfig, result: pipeline.PipelineResult) -> str:
    lines = [
        f"runner: {cfg.model.name} on {cfg.chip.name}, bs={cfg.bs}, dataset={cfg.dataset.name}",
        f"  {'stage':<11}{'cache':<7}{'seconds':>9}",
    ]
    for record in result.stages:
        lines.append(f"  {record.name:<11}{'hit' if record.entry.hit else 'miss':<7}"
                     f"{record.seconds:>9.2f}")
    metrics = result.metrics
    shown = [(k, metrics[k]) for k in SUMMARY_METRICS if k in metrics]
    if shown:
        lines.append("  " + "  ".join(f"{k}={v:.2f}" for k, v in shown))
    return "\n".join(lines)


def run_job(cfg: DictConfig) -> dict[str, float]:
    """One job: validate, run every configured stage inside an MLflow run; the metrics."""
    link = sweep.current_link()  # set when this job is part of a sweep (`-m`)
    try:
        run_cfg = config.validate(cfg)
    except ConfigError as error:
        if link is not None:  # so the sweep's table lists it with the other jobs
            tracking.record_invalid_config(cfg, error, link)
        raise
    tree: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with tracking.tracked_run(run_cfg, tree, run_dir, sweep=link) as run_id:
        log.info("MLflow run %s (%s)", run_id, run_cfg.mlflow.tracking_uri)
        result = pipeline.run(run_cfg, on_stage=tracking.log_stage)
    print(summary_table(run_cfg, result))
    return result.metrics


@hydra.main(version_base="1.3", config_path=str(config.PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> dict[str, float] | None:
    try:
        return run_job(cfg)
    except RunnerError as error:
        log.error("%s", error)
        print(f"runner: error: {error}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return None  # the other jobs of the sweep still run
        raise SystemExit(1) from None
