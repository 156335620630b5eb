"""Sweeps (`python -m runner -m model=a,b bs=1,4`): one MLflow parent run per sweep, a nested
child run per job, and at the end the guides' table (accuracy and throughput per model, chip and
batch size, beside the guide's published figures: runner/report.py) as the parent's Description,
markdown, a wide CSV and plots on the parent, printed in the terminal.

`SweepCallback` is registered in conf/config.yaml (`hydra.callbacks`). Hydra calls
`on_multirun_start`/`on_multirun_end` in the process that launched the sweep and
`on_job_start`/`on_job_end` in the process running the job: the same one, a joblib worker, a Ray
worker or a Slurm job. The callback object travels pickled to the job with the parent's run id
set, so every launcher links the children the same way, and the table is read back from the
tracking store, where every job's run lands wherever it ran.
"""

from __future__ import annotations

import atexit
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner import environment, redact, report, search
from runner.config import MlflowConfig

if TYPE_CHECKING:  # MLflow's import is slow: every function that needs it imports it
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger("runner")

TABLE_DIR = "sweep"  # in the sweep folder and in the parent run's artifacts


@dataclass(frozen=True)
class SweepLink:
    """What a sweep job's run needs to hang under its sweep's parent run."""

    parent_run_id: str
    job_num: int
    overrides: list[str] = field(default_factory=list)  # the job's command-line overrides


_job: SweepLink | None = None  # the sweep job running in this process, if any


def current_link() -> SweepLink | None:
    """The parent run of the sweep job running in this process; None outside a sweep."""
    return _job


def plot(jobs: Sequence[report.Job], metric: str, ylabel: str, title: str) -> Any:
    """`metric` against batch size, one line per model and chip (and dataset, when several);
    hollow markers for INVALID figures, error bars from the repeats' min/max where logged, and
    the published figures (dashed) where the chip has some."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    several_datasets = len({job.dataset for job in jobs}) > 1
    lines: dict[str, list[report.Job]] = {}
    for job in jobs:
        if job.status == "FINISHED" and metric in job.metrics and job.bs_int is not None:
            label = f"{job.model} / {job.chip}" + (f" / {job.dataset}" if several_datasets else "")
            lines.setdefault(label, []).append(job)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for label, members in sorted(lines.items()):
        members.sort(key=lambda j: j.bs_int or 0)
        sizes = [j.bs_int for j in members]
        values = [j.metrics[metric] for j in members]
        (line,) = axes.plot(sizes, values, label=label)
        color = line.get_color()
        for job, bs, value in zip(members, sizes, values, strict=True):
            hollow = job.verdict == "INVALID"
            axes.plot([bs], [value], marker="o", color=color,
                      markerfacecolor="none" if hollow else color)
            low, high = (job.metrics.get(f"{metric}_min"), job.metrics.get(f"{metric}_max"))
            if low is not None and high is not None:
                axes.errorbar([bs], [value], yerr=[[value - low], [high - value]], color=color,
                              capsize=3)
        published = members[0].published
        if metric == "throughput_fps" and published is not None and published.fps:
            points = sorted(published.fps.items())
            axes.plot([b for b, _ in points], [v for _, v in points], linestyle="--",
                      marker="s", color=color, alpha=0.6, label=f"{label}: published")
    axes.set_xscale("log", base=2)
    sizes_used = sorted({j.bs_int for members in lines.values() for j in members
                         if j.bs_int is not None})
    axes.set_xticks(sizes_used, [str(bs) for bs in sizes_used])
    axes.minorticks_off()
    axes.set_xlabel("batch size")
    axes.set_ylabel(ylabel)
    axes.set_title(title + "\nhollow marker: INVALID figure; bars: min-max over the repeats",
                   fontsize=9)
    axes.grid(True, alpha=0.3)
    if lines:
        axes.legend(fontsize=8)
    return figure


def accuracy_vs_throughput(jobs: Sequence[report.Job]) -> Any:
    """A precision sweep's trade-off: top-1 against throughput, one point per precision and
    batch size (a marker per precision, a colour per model and chip), each model and chip's
    Pareto front (no point both faster and more accurate) drawn as a step line."""
    from matplotlib.figure import Figure

    several_datasets = len({job.dataset for job in jobs}) > 1
    series: dict[str, list[report.Job]] = {}
    for job in jobs:
        if (job.status == "FINISHED" and "top1" in job.metrics
                and "throughput_fps" in job.metrics):
            label = f"{job.model} / {job.chip}" + (f" / {job.dataset}" if several_datasets
                                                    else "")
            series.setdefault(label, []).append(job)
    markers = dict(zip(report.precisions(jobs), "os^Dvx", strict=False))
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for label, members in sorted(series.items()):
        points = [(j.metrics["throughput_fps"], j.metrics["top1"]) for j in members]
        front = report.pareto_front(points)
        (line,) = axes.plot([p[0] for p in front], [p[1] for p in front], drawstyle="steps-post",
                            label=f"{label}: Pareto front")
        color = line.get_color()
        for job, (fps, top1) in zip(members, points, strict=True):
            hollow = job.verdict == "INVALID"
            axes.plot([fps], [top1], marker=markers.get(job.precision, "o"), color=color,
                      markerfacecolor="none" if hollow else color, linestyle="none")
            axes.annotate(f"{job.precision or '?'} bs{job.bs}", (fps, top1), fontsize=7,
                          textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("throughput_fps (images/s)")
    axes.set_ylabel("top-1 %")
    axes.set_title("accuracy vs throughput per precision and batch size\nmarker: precision "
                   f"({', '.join(f'{m} {p}' for p, m in markers.items())}); hollow: INVALID "
                   "figure", fontsize=9)
    axes.grid(True, alpha=0.3)
    if series:
        axes.legend(fontsize=8)
    return figure


def figures(jobs: Sequence[report.Job]) -> dict[str, Any]:
    """The sweep's plots by file name: throughput and latency against bs, and in a precision
    sweep accuracy against throughput."""
    made = {
        "throughput_vs_bs.png": plot(jobs, "throughput_fps", "throughput_fps (images/s)",
                                     "throughput vs batch size: 1000*bs / mean compute ms, "
                                     "benchmark stage"),
        "latency_p99_vs_bs.png": plot(jobs, "latency_ms_p99", "latency p99 (ms per batch)",
                                      "latency vs batch size: p99 of per-call compute ms, "
                                      "benchmark stage"),
    }
    if report.is_precision_sweep(jobs):
        made["accuracy_vs_throughput.png"] = accuracy_vs_throughput(jobs)
    return made


def sweep_params(overrides: Sequence[str]) -> dict[str, str]:
    """The sweep's command-line values by key (`bs` -> `1,4,8`), as the values parsed, never
    Hydra's escaped text; Hydra's own keys left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from runner import tracking

    params: dict[str, str] = {}
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as error:  # Hydra accepted them already: a param is not worth failing for
        log.warning("cannot read the sweep's overrides as params (%s)", error)
        return params
    for override in parsed:
        if override.is_hydra_override() or override.is_delete() or (
                override.key_or_group.split(".")[0] in tracking.NOT_PARAMS):
            continue
        if override.is_sweep_override():
            try:
                value = ",".join(str(v) for v in override.sweep_iterator())
            except Exception:  # interval(1,64): a range for optuna, not a list of values
                value = override.get_value_element_as_str()
        else:
            value = str(override.value())
        params[f"sweep.{override.key_or_group}"] = value
    return params


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
        self.gate: Any = None  # runner.compare.Gate: compare.baseline, checked before any job
        self.gate_failure = ""  # the line of a failed gate, set when the sweep closes
        self.gate_error = ""  # why the comparison could not be made (exit status 2)

    # -- in the process that launched the sweep --

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        baseline = OmegaConf.select(config, "compare.baseline")
        if baseline is not None:
            from runner.compare import Gate
            from runner.errors import RunnerError

            try:  # before any job: a baseline that cannot be read stops the sweep at once
                self.gate = Gate.setup(str(baseline),
                                       list(OmegaConf.select(config, "compare.fail_on") or []),
                                       str(config.mlflow.tracking_uri),
                                       bool(OmegaConf.select(config, "compare.strict")))
            except RunnerError as error:
                print(redact.text(f"runner: error: {error}"), file=sys.stderr)
                raise SystemExit(2) from None
        from runner.errors import ConfigError

        try:  # an optuna search's own settings: refused once, before any trial
            search.check_sweeper(config)
        except ConfigError as error:
            print(redact.text(f"runner: error: {error}"), file=sys.stderr)
            raise SystemExit(1) from None
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
        jobs = self._close(config, stopped_early=False)
        failed = [job for job in jobs if job.status != "FINISHED"]
        if failed:
            print(f"runner: error: {len(failed)} of {len(jobs)} sweep jobs did not finish "
                  "(status and error under the table above)", file=sys.stderr)
        if self.gate_error:
            print(redact.text(f"runner: error: {self.gate_error}"), file=sys.stderr)
            raise SystemExit(2)
        if self.gate_failure:
            print(redact.text(f"runner: error: {self.gate_failure}"), file=sys.stderr)
        if failed or self.gate_failure:
            raise SystemExit(1)

    # -- in the process running a job --

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _job
        if self.parent_run_id is not None:
            _job = SweepLink(self.parent_run_id, int(config.hydra.job.num),
                             list(config.hydra.overrides.task))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        global _job
        _job = None

    # --

    def _open(self, config: DictConfig) -> None:
        from mlflow.tracking import MlflowClient

        from runner import tracking

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
        for key, value in redact.tree(sweep_params(overrides)).items():
            client.log_param(self.parent_run_id, key, value)
        if self.planned is not None:
            client.log_metric(self.parent_run_id, "jobs_planned", len(self.planned))
        log.info("sweep: MLflow parent run %s (%s)", self.parent_run_id, self.tracking_uri)

    def _compare(self, runs: list[Run], notes: list[str]) -> Any:
        """The children against compare.baseline (None without one); a note of the verdict."""
        if self.gate is None:
            return None
        from runner.errors import RunnerError

        assert self.parent_run_id is not None
        try:
            comparison = self.gate.judge(runs, self.parent_run_id, "sweep")
        except RunnerError as error:  # e.g. another dataset: said under the table, exit 2
            self.gate_error = str(error)
            notes.append(f"not compared with compare.baseline={self.gate.baseline.source}: "
                         f"{error}")
            return None
        self.gate_failure = self.gate.failure(comparison)
        notes.append(f"vs baseline {self.gate.baseline.source}: {comparison.summary()} (the "
                     "rows and the rule below; docs/compare.md)")
        return comparison

    def _search_outcome(self, client: MlflowClient, config: DictConfig, runs: list[Run],
                        jobs: list[report.Job]) -> str:
        """The search's section of the report; its best feasible setting tagged on the
        parent (`search.best`, `search.best_run`, metric `search_best_<objective>`)."""
        assert self.parent_run_id is not None
        keys = search.space_keys(config)
        settings = {run.info.run_id: search.setting_of(run.data.params, keys) for run in runs}
        result = search.outcome(jobs, settings, search.sampler_of(config))
        client.set_tag(self.parent_run_id, "search.space", " ".join(keys))
        client.log_metric(self.parent_run_id, "search_trials", result.trials)
        client.log_metric(self.parent_run_id, "search_feasible_trials", result.feasible)
        if result.best is None:
            client.set_tag(self.parent_run_id, "search.best", "none feasible")
        else:
            client.set_tag(self.parent_run_id, "search.best", result.best.setting)
            client.set_tag(self.parent_run_id, "search.best_run", result.best.job.run_id)
            value = result.best.value(result.objective)
            if value is not None:
                client.log_metric(self.parent_run_id, f"search_best_{result.objective}", value)
        return result.text

    def _close_if_stopped(self, config: DictConfig) -> None:
        if self.parent_run_id is not None and not self._closed:
            self._close(config, stopped_early=True)

    def _close(self, config: DictConfig, stopped_early: bool) -> list[report.Job]:
        """Read the children back, write and log the report, table and plots, end the parent."""
        from mlflow.tracking import MlflowClient

        from runner import tracking

        assert self.parent_run_id is not None and self.experiment_id is not None
        self._closed = True
        client = MlflowClient(tracking_uri=self.tracking_uri)
        runs = children(client, self.experiment_id, self.parent_run_id)
        jobs = report.build_jobs(runs, self.planned)
        out_dir = Path(str(config.hydra.sweep.dir)) / TABLE_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        finished = sum(job.status == "FINISHED" for job in jobs)
        hosts = sorted({run.data.tags.get("host", "?") for run in runs})
        title = (f"Sweep {time.strftime('%Y-%m-%d %H:%M')}: {finished} of {len(jobs)} jobs "
                 f"finished{', stopped early' if stopped_early else ''}")
        notes = [f"measured on {', '.join(hosts)}"]
        comparison = self._compare(runs, notes)
        text = report.sweep_report(jobs, title, notes,
                                   versus=comparison.by_run() if comparison else None)
        sweeper = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
        if search.active_in(config, sweeper) or search.is_search(jobs):
            # its trials judged: the best feasible, why the others lost
            text += "\n" + self._search_outcome(client, config, runs, jobs)
        if comparison is not None:
            text += "\n" + comparison.table()
            (out_dir / "compare.csv").write_text(comparison.csv())
            client.log_artifact(self.parent_run_id, str(out_dir / "compare.csv"), TABLE_DIR)
            client.set_tag(self.parent_run_id, "compare.baseline", self.gate.baseline.source)
            client.set_tag(self.parent_run_id, "compare.verdict",
                           "REGRESSED" if self.gate_failure else comparison.summary())
        (out_dir / "report.md").write_text(text)
        (out_dir / "table.csv").write_text(report.csv_table(jobs))
        plots = figures(jobs)
        for name, figure in plots.items():
            figure.savefig(out_dir / name, dpi=100)
        client.set_tag(self.parent_run_id, "mlflow.note.content", text)
        client.log_artifact(self.parent_run_id, str(out_dir / "report.md"), TABLE_DIR)
        client.log_artifact(self.parent_run_id, str(out_dir / "table.csv"), TABLE_DIR)
        for name, figure in plots.items():
            client.log_figure(self.parent_run_id, figure, f"{TABLE_DIR}/{name}")
        client.log_metric(self.parent_run_id, "jobs_finished", finished)
        client.log_metric(self.parent_run_id, "jobs_failed", len(jobs) - finished)
        if stopped_early:
            client.set_tag(self.parent_run_id, "error",
                           "the sweep stopped before all its jobs ended")
        ok = finished == len(jobs) and not stopped_early
        client.set_terminated(self.parent_run_id, "FINISHED" if ok else "FAILED")
        assert self.tracking_uri is not None
        print(f"\n{text}\nrunner: report, wide table (table.csv) and plots in {out_dir}\n"
              f"runner: see it: {tracking.ui_command(self.tracking_uri)}, then open "
              f"{tracking.run_url(self.tracking_uri, self.experiment_id, self.parent_run_id)}",
              flush=True)
        return jobs


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
