"""Sweeps (`python -m runner -m model=a,b bs=1,4`): one MLflow parent run per sweep, a nested
child run per job, and at the end the guides' table (accuracy and throughput per model, chip and
batch size) as markdown, CSV and plots on the parent, printed in the terminal.

`SweepCallback` is registered in conf/config.yaml (`hydra.callbacks`). Hydra calls
`on_multirun_start`/`on_multirun_end` in the process that launched the sweep and
`on_job_start`/`on_job_end` in the process running the job: the same one, a joblib worker, a Ray
worker or a Slurm job. The callback object travels pickled to the job with the parent's run id
set, so every launcher links the children the same way, and the table is read back from the
tracking store, where every job's run lands wherever it ran.
"""

from __future__ import annotations

import atexit
import csv
import io
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from runner import environment, redact, tracking
from runner.config import MlflowConfig

log = logging.getLogger("runner")

# The guide's table: one row per job. e2e_fps is filled where the infer stage measures it.
METRIC_COLUMNS = ("top1", "top5", "throughput_fps", "latency_ms_p99", "e2e_fps")
COLUMNS = ("job", "model", "chip", "bs", "dataset", *METRIC_COLUMNS, "cache", "status", "error",
           "run_id")
NO_RUN = "NO RUN"  # the status of a planned job that left no MLflow run
TABLE_DIR = "sweep"  # in the sweep folder and in the parent run's artifacts
METHOD_NOTES = (
    "top1/top5: percent of the dataset's images whose class is in the k highest logits "
    "(evaluate stage).",
    "throughput_fps: 1000 * bs / mean compute ms of one synchronous session.run (ais_bench's "
    "figure); latency_ms_p99: 99th percentile of those per-call ms; benchmark stage, after its "
    "warm-up; iterations, timer and settings are in each run's stages/benchmark/benchmark.json.",
    "e2e_fps: images / wall seconds of the infer stage's pass over the dataset "
    "(method in that run's infer stage).",
    "cache: stages of the job found finished in the stage cache / stages run.",
)

_job: tracking.SweepLink | None = None  # the sweep job running in this process, if any


def current_link() -> tracking.SweepLink | None:
    """The parent run of the sweep job running in this process; None outside a sweep."""
    return _job


@dataclass
class Row:
    job: int | None
    model: str
    chip: str
    bs: str
    dataset: str
    metrics: dict[str, float] = field(default_factory=dict)
    cache: str = ""
    status: str = ""
    error: str = ""
    run_id: str = ""

    def sort_key(self) -> tuple[Any, ...]:
        bs = int(self.bs) if self.bs.isdigit() else sys.maxsize
        # a model's rows by batch size, chips side by side (the guides' tables); jobs that left
        # no run, whose chip and dataset are unknown, at the end
        job = self.job if self.job is not None else -1
        return (self.status == NO_RUN, self.model, self.dataset, bs, self.chip, job)

    def cells(self, number_format: str) -> list[str]:
        values = [format(self.metrics[m], number_format) if m in self.metrics else ""
                  for m in METRIC_COLUMNS]
        job = "" if self.job is None else str(self.job)
        return [job, self.model, self.chip, self.bs, self.dataset, *values, self.cache,
                self.status, self.error, self.run_id]


def row_from_run(run: Run) -> Row:
    tags = run.data.tags
    cache = [v for k, v in tags.items() if k.startswith("cache.")]
    job = tags.get("sweep.job_num", "")
    return Row(
        job=int(job) if job.isdigit() else None,
        model=tags.get("model", ""),
        chip=tags.get("chip", ""),
        bs=tags.get("bs", ""),
        dataset=tags.get("dataset", ""),
        metrics={m: run.data.metrics[m] for m in METRIC_COLUMNS if m in run.data.metrics},
        cache=f"{cache.count('hit')}/{len(cache)} hit" if cache else "",
        status=run.info.status,
        error=tags.get("error", ""),
        run_id=run.info.run_id,
    )


def row_without_run(job: int, overrides: Sequence[str]) -> Row:
    """A planned job that left no run: its process died or never started."""
    given = dict(line.lstrip("+").partition("=")[::2] for line in overrides)
    return Row(job=job, model=given.get("model", given.get("model.name", "")),
               chip=given.get("chip", given.get("chip.name", "")), bs=given.get("bs", ""),
               dataset=given.get("dataset", given.get("dataset.name", "")), status=NO_RUN,
               error=f"no MLflow run was recorded for job {job} ({' '.join(overrides)})")


def build_rows(runs: Sequence[Run], planned: Sequence[Sequence[str]] | None) -> list[Row]:
    rows = [row_from_run(run) for run in runs]
    seen = {row.job for row in rows}
    for job, overrides in enumerate(planned or []):
        if job not in seen:
            rows.append(row_without_run(job, overrides))
    return sorted(rows, key=Row.sort_key)


def markdown_table(rows: Sequence[Row]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    lines = [line(COLUMNS), line(["---"] * len(COLUMNS))]
    lines += [line(row.cells(".2f")) for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(row.cells(".6g"))
    return out.getvalue()


def plot(rows: Sequence[Row], metric: str, ylabel: str, title: str) -> Any:
    """`metric` against batch size, one line per model and chip (and dataset, when several)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    several_datasets = len({row.dataset for row in rows}) > 1
    lines: dict[str, dict[int, float]] = {}
    for row in rows:
        if row.status == "FINISHED" and metric in row.metrics and row.bs.isdigit():
            label = f"{row.model} / {row.chip}" + (f" / {row.dataset}" if several_datasets else "")
            lines.setdefault(label, {})[int(row.bs)] = row.metrics[metric]
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for label, points in sorted(lines.items()):
        sizes = sorted(points)
        axes.plot(sizes, [points[bs] for bs in sizes], marker="o", label=label)
    axes.set_xscale("log", base=2)
    sizes_used = sorted({bs for points in lines.values() for bs in points})
    axes.set_xticks(sizes_used, [str(bs) for bs in sizes_used])
    axes.minorticks_off()
    axes.set_xlabel("batch size")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=9)
    axes.grid(True, alpha=0.3)
    if lines:
        axes.legend()
    return figure


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of each job, in job-number order, as Hydra's basic sweeper will make them;
    None for another sweeper (whose jobs are then only those that left a run)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    target = OmegaConf.select(config, "hydra.sweeper._target_")
    if target != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(config.hydra.overrides.task)
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception as error:  # e.g. glob() needs the config loader: count jobs by their runs
        log.warning("cannot list the sweep's jobs in advance (%s)", error)
        return None
    return [job for batch in batches for job in batch]


def mlflow_settings(config: DictConfig) -> MlflowConfig:
    return MlflowConfig(tracking_uri=str(config.mlflow.tracking_uri),
                        artifact_location=str(config.mlflow.artifact_location),
                        experiment=str(config.mlflow.experiment))


class SweepCallback(Callback):
    """The parent run of a sweep: opened before the first job, closed with the table after the
    last one (or, if the sweep stops early, when the process exits)."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self.planned: list[list[str]] | None = None
        self._closed = False

    # -- in the process that launched the sweep --

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._open(config)
        except Exception as error:
            # the jobs could not be tracked either: stop before running any
            print(redact.text(f"runner: error: cannot open the sweep's MLflow run at "
                              f"{config.mlflow.tracking_uri}: {type(error).__name__}: {error}"),
                  file=sys.stderr)
            raise SystemExit(1) from None
        atexit.register(self._close_if_stopped, config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None or self._closed:
            return
        rows = self._close(config, stopped_early=False)
        failed = [row for row in rows if row.status != "FINISHED"]
        if failed:
            print(f"runner: error: {len(failed)} of {len(rows)} sweep jobs did not finish "
                  "(status and error in the table above)", file=sys.stderr)
            raise SystemExit(1)

    # -- in the process running a job --

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _job
        if self.parent_run_id is not None:
            _job = tracking.SweepLink(self.parent_run_id, int(config.hydra.job.num),
                                      list(config.hydra.overrides.task))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        global _job
        _job = None

    # --

    def _open(self, config: DictConfig) -> None:
        settings = mlflow_settings(config)
        # Made here, once, before any job starts: parallel jobs then find the store's schema
        # and the experiment ready instead of racing to create them.
        self.experiment_id = tracking.experiment_id(settings)
        self.tracking_uri = settings.tracking_uri
        self.planned = planned_jobs(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        overrides = list(config.hydra.overrides.task)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        run = client.create_run(
            self.experiment_id,
            run_name=f"sweep-{time.strftime('%Y-%m-%d-%H%M%S')}",
            tags={
                "sweep.role": "parent",
                "sweep.dir": str(sweep_dir),
                "sweep.command": redact.text(" ".join(overrides))[:5000],
                "sweep.launcher": str(OmegaConf.select(config, "hydra.launcher._target_")),
                "git_commit": environment.git_commit(),
                "sweep.host": environment.host_id(),  # where it was launched; jobs tag their own
            },
        )
        self.parent_run_id = run.info.run_id
        for key, value in redact.tree(tracking.override_params(overrides)).items():
            client.log_param(self.parent_run_id, key, value)
        if self.planned is not None:
            client.log_metric(self.parent_run_id, "jobs_planned", len(self.planned))
        log.info("sweep: MLflow parent run %s (%s)", self.parent_run_id, self.tracking_uri)

    def _close_if_stopped(self, config: DictConfig) -> None:
        if self.parent_run_id is not None and not self._closed:
            self._close(config, stopped_early=True)

    def _close(self, config: DictConfig, stopped_early: bool) -> list[Row]:
        """Read the children back, write and log the table and plots, end the parent run."""
        assert self.parent_run_id is not None and self.experiment_id is not None
        self._closed = True
        client = MlflowClient(tracking_uri=self.tracking_uri)
        runs = children(client, self.experiment_id, self.parent_run_id)
        rows = build_rows(runs, self.planned)
        out_dir = Path(str(config.hydra.sweep.dir)) / TABLE_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        hosts = sorted({run.data.tags.get("env.host", "?") for run in runs})
        notes = "\n".join(f"- {note}" for note in (*METHOD_NOTES, f"hosts: {', '.join(hosts)}"))
        (out_dir / "table.md").write_text(f"{markdown_table(rows)}\n{notes}\n")
        (out_dir / "table.csv").write_text(csv_table(rows))
        figures = {
            "throughput_vs_bs.png": plot(rows, "throughput_fps", "throughput_fps (images/s)",
                                         "throughput vs batch size: 1000*bs / mean compute ms, "
                                         "benchmark stage"),
            "latency_p99_vs_bs.png": plot(rows, "latency_ms_p99", "latency p99 (ms per batch)",
                                          "latency vs batch size: p99 of per-call compute ms, "
                                          "benchmark stage"),
        }
        for name, figure in figures.items():
            figure.savefig(out_dir / name, dpi=100)
        client.log_artifact(self.parent_run_id, str(out_dir / "table.md"), TABLE_DIR)
        client.log_artifact(self.parent_run_id, str(out_dir / "table.csv"), TABLE_DIR)
        for name, figure in figures.items():
            client.log_figure(self.parent_run_id, figure, f"{TABLE_DIR}/{name}")
        finished = sum(row.status == "FINISHED" for row in rows)
        client.log_metric(self.parent_run_id, "jobs_finished", finished)
        client.log_metric(self.parent_run_id, "jobs_failed", len(rows) - finished)
        if stopped_early:
            client.set_tag(self.parent_run_id, "error",
                           "the sweep stopped before all its jobs ended")
        ok = finished == len(rows) and not stopped_early
        client.set_terminated(self.parent_run_id, "FINISHED" if ok else "FAILED")
        print(f"\nrunner: sweep of {len(rows)} jobs, MLflow parent run {self.parent_run_id} "
              f"({self.tracking_uri}); table and plots in {out_dir}")
        print(markdown_table(rows), flush=True)
        return rows


def children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
