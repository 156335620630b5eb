"""MLflow: one run per job, lean enough to read in the UI: the settings a user varies as params
(the whole config is the `config/config.yaml` artifact), a handful of tags that say what was
run, metrics named the same in every run (so runs compare), the environment and the stages'
cache keys as one `run.json` artifact, the run compared with its guide's published figures as
its Description, and the right end status."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import sys
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlsplit

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from runner import environment, memory, redact, report, search
from runner.cache import check_writable
from runner.config import MlflowConfig, RunConfig
from runner.errors import TrackingError
from runner.locks import file_lock
from runner.models import weights
from runner.pipeline import StageRecord
from runner.sweep import SweepLink

log = logging.getLogger("runner")


def check_store(settings: MlflowConfig, timeout_s: float = 5.0) -> None:
    """Fail at once, naming the store, where MLflow would retry for minutes or fail obscurely."""
    uri = settings.tracking_uri
    shown = redact.text(uri)
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        # /health answers without credentials; the userinfo is not for urllib
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
        probe = parts._replace(netloc=netloc, path=parts.path.rstrip("/") + "/health").geturl()
        try:
            urllib.request.urlopen(probe, timeout=timeout_s).close()
        except urllib.error.HTTPError:
            return  # it answered: MLflow reports whatever it has to say (auth, wrong path ...)
        except (urllib.error.URLError, OSError) as error:  # refused, unknown host, timed out
            reason = getattr(error, "reason", error)
            raise TrackingError(
                f"MLflow tracking server {shown} is unreachable ({reason}): start it (e.g. "
                "mlflow server --host 127.0.0.1 --port 5000) or pass "
                "mlflow.tracking_uri=sqlite:///path/to/mlflow.db"
            ) from None
    elif parts.scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        folder = db.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(
                f"mlflow.tracking_uri={shown}: folder {folder} does not exist or is not "
                "writable; create it or pass another mlflow.tracking_uri"
            )
        _check_sqlite_file(db, shown)
    elif parts.scheme and parts.scheme not in ("file", "databricks"):
        _check_database_driver(uri, shown)
    location = settings.artifact_location
    if parts.scheme not in ("http", "https") and not urlparse(location).scheme:
        # MLflow would fail on its first artifact, after the work, with a bare FileNotFoundError
        check_writable(Path(location), "mlflow.artifact_location")


def _check_sqlite_file(db: Path, shown: str) -> None:
    """An existing SQLite store must be a database MLflow can open (not a damaged file)."""
    if not db.exists():
        return
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as error:
        raise TrackingError(
            f"mlflow.tracking_uri={shown}: {db} cannot be opened as an SQLite database ({error}):"
            " restore it from a backup, or move it away and pass another mlflow.tracking_uri"
        ) from None


def _check_database_driver(uri: str, shown: str) -> None:
    """postgresql://, mysql://...: the driver SQLAlchemy needs must be installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ImportError, NoSuchModuleError, ArgumentError) as error:
        raise TrackingError(
            f"mlflow.tracking_uri={shown}: the database driver cannot be loaded ({error}): "
            "install it (e.g. pip install psycopg2-binary for postgresql, pymysql for "
            "mysql+pymysql) or pass mlflow.tracking_uri=sqlite:///path/to/mlflow.db"
        ) from None


def experiment_id(settings: MlflowConfig) -> str:
    if redact.text(settings.experiment) != settings.experiment:
        raise TrackingError(
            "mlflow.experiment holds a secret (the value of a secret-named environment variable "
            "or a URL password), which would be the experiment's name in MLflow: name the "
            "experiment without it"
        )
    mlflow.set_tracking_uri(settings.tracking_uri)
    # Two processes opening a new SQLite store at once both run MLflow's schema migrations
    # ("table ... already exists"), and both may create the experiment: one at a time per file.
    with _sqlite_init_lock(settings.tracking_uri):
        client = MlflowClient()
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(settings.experiment,
                                            artifact_location=_artifact_uri(settings))
        except MlflowException:
            # another host made it first (server store: the SQLite lock does not reach there)
            experiment = client.get_experiment_by_name(settings.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id


def _artifact_uri(settings: MlflowConfig) -> str | None:
    """A local folder for a local store; for a tracking server, the server's own artifact store
    (`mlflow server --serve-artifacts`) unless a URI (s3://, file://...) is given."""
    location = settings.artifact_location
    remote_store = urlparse(settings.tracking_uri).scheme in ("http", "https")
    if urlparse(location).scheme:
        return location
    if remote_store:
        return None  # a path on this host means nothing to the other hosts logging there
    path = Path(location)
    return path.as_uri() if path.is_absolute() else location


@contextmanager
def _sqlite_init_lock(tracking_uri: str) -> Iterator[None]:
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    with file_lock(db.with_name(f"{db.name}-init.lock")):
        yield


# The params of a run: the settings users vary (what the compare view lines up), named by their
# config key. model, chip and dataset are tags; every other key is in config/config.yaml.
PARAM_KEYS = (
    "bs", "seed", "model.weights", "model.preprocess.library", "model.preprocess.resize",
    "model.preprocess.interpolation", "model.preprocess.crop", "model.preprocess.on_device",
    "dataset.root", "dataset.limit",
    "chip.runtime", "chip.precision", "chip.threads", "chip.devices", "chip.soc_version",
    "infer.result_format", "benchmark.input", "benchmark.warmup_iters", "benchmark.min_iters",
    "benchmark.min_duration_s", "benchmark.repeats", "cache.force",
)
# chip.precision=int8: the quantization's calibration, a setting of what is measured there
INT8_PARAM_KEYS = ("chip.calibration.method", "chip.calibration.num_images")
MAX_PARAMS = 30
MEMORY_TAG = "peak_rss.method"  # how peak_rss_mib and peak_rss_mib_<stage> are measured
BY_BS_METRIC = "throughput_fps_by_bs"  # throughput_fps logged at step = bs
# config groups whose choice is a tag already (model, chip, dataset) or the `stages` tag
GROUPS_AS_TAGS = ("model", "chip", "dataset", "stage")


# where things live and how errors print: not settings of what is measured
NOT_PARAMS = ("hydra", "mlflow", "paths", "traceback")


def override_keys(overrides: list[str]) -> list[str]:
    """The config keys the command line set (`+x.y=3` -> x.y), Hydra's own and NOT_PARAMS left
    out."""
    keys = []
    for line in overrides:
        key = line.partition("=")[0].lstrip("+~")
        if key and key.split(".")[0] not in NOT_PARAMS and key not in keys:
            keys.append(key)
    return keys


def _param_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def run_params(tree: dict[str, Any], overrides: list[str],
               choices: dict[str, Any] | None = None) -> dict[str, Any]:
    """PARAM_KEYS and the keys the command line set, with their composed values (never the
    override's text, which Hydra escapes: `sqlite\\:///...`), at most MAX_PARAMS. `choices`:
    the config groups' selected options (`debug=smoke` is a group, not a key)."""
    cfg = OmegaConf.create(tree)
    params: dict[str, Any] = {}
    int8 = OmegaConf.select(cfg, "chip.precision", default=None) == "int8"
    for key in (*PARAM_KEYS, *(INT8_PARAM_KEYS if int8 else ()), *override_keys(overrides)):
        if key in params or key in GROUPS_AS_TAGS:
            continue
        if choices and key in choices:
            value = choices[key]
        else:
            value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value)
        if len(params) == MAX_PARAMS:
            log.warning("more than %d params: %s and later are only in config/config.yaml",
                        MAX_PARAMS, key)
            break
        params[key] = _param_value(value)
    return redact.tree(params)


def run_tags(cfg: RunConfig) -> dict[str, str]:
    """What was run, in a handful of tags (the environment is in run.json)."""
    src = weights.source(cfg.model)
    tags = {
        "model": cfg.model.name,
        "chip": cfg.chip.name,
        "dataset": report.describe_dataset(cfg.dataset),
        "stages": ",".join(cfg.stage.stages),
        "weights": weights.identity(src, cfg.seed),
        "weights_kind": src.kind,
        "git_commit": environment.git_commit(),
        "host": environment.host_id(),
        # where the crops are normalized: host_float (the guides' default) or on_device (AIPP
        # on Ascend, the model's first nodes elsewhere)
        report.ROUTE_TAG: cfg.model.preprocess.normalization().route,
    }
    if src.is_random:
        tags["accuracy_note"] = "random weights: accuracy is meaningless"
    published = report.Published.from_config(cfg.model.published, cfg.chip.name)
    if published is not None:
        tags[report.PUBLISHED_TAG] = published.to_json()
    return {name: redact.text(value) for name, value in tags.items()}


def readable(metrics: dict[str, float]) -> dict[str, float]:
    """Values as MLflow shows them: 7 significant digits (56.528, not 56.52799987792969), far
    finer than any of these measurements."""
    return {k: float(f"{float(v):.7g}") for k, v in metrics.items()}


# what run.json gathers while a run goes: the stages' cache keys and hits (log_stage)
_stage_records: dict[str, dict[str, Any]] = {}


def log_stage(record: StageRecord) -> None:
    output = record.entry.output
    mlflow.log_metrics(readable(output.metrics))  # time_<stage>_s: at the end (_log_record)
    if record.memory_metrics():  # measured now, even for a cache hit: not in the entry's metrics
        mlflow.log_metrics(readable(record.memory_metrics()))
    _stage_records[record.name] = {"cache": "hit" if record.entry.hit else "miss",
                                   "key": record.entry.key, "seconds": record.seconds,
                                   "provenance": record.provenance}
    if record.measures:  # a reused figure names the run that measured it; a fresh one says so
        made = record.provenance
        mlflow.set_tags({f"{record.name}.measured_at": str(made.get("made_at", "unknown")),
                         f"{record.name}.measured_in_run": str(made.get("run_id") or "unknown")})
        if record.reused:
            _stage_records[record.name]["reused"] = True
            mlflow.set_tag(f"{record.name}.reused_from", str(made.get("run_id") or "unknown"))
    verdict = output.info.get("verdict")
    if verdict:
        mlflow.set_tags({f"{record.name}.verdict": verdict["verdict"],
                         f"{record.name}.verdict_reasons": "; ".join(verdict["reasons"])[:5000]})
    for relative in output.artifacts.values():
        path = record.entry.path / relative
        # the small text a stage hands on (JSON, Ascend's aipp.cfg), not models or tensors
        if path.is_file() and path.stat().st_size < 8 << 20 and path.suffix in (".json", ".cfg"):
            mlflow.log_artifact(str(path), artifact_path=f"stages/{record.name}")
    if output.info:
        mlflow.log_dict(redact.tree(output.info), f"stages/{record.name}/info.json")


@dataclass
class ActiveRun:
    run_id: str
    experiment_id: str
    # set when the run ends FINISHED: its comparison with the published figures, for the terminal
    summary_lines: list[str] = field(default_factory=list)


@contextmanager
def tracked_run(cfg: RunConfig, config_tree: dict[str, Any], run_dir: Path,
                sweep: SweepLink | None = None, overrides: list[str] | None = None,
                choices: dict[str, Any] | None = None) -> Iterator[ActiveRun]:
    """An active MLflow run; FINISHED on success, FAILED (KILLED on Ctrl-C) with the error.
    In a sweep, the run is nested under the sweep's parent run. `overrides`: the command line's,
    whose keys become params besides PARAM_KEYS; `choices`: the config groups' options."""
    tags = {**run_tags(cfg), MEMORY_TAG: memory.METHOD}
    if sweep is not None:
        tags["sweep.job_num"] = str(sweep.job_num)
        overrides = sweep.overrides
    check_store(cfg.mlflow)
    experiment = experiment_id(cfg.mlflow)
    run = mlflow.start_run(
        experiment_id=experiment,
        run_name=redact.text(f"{cfg.model.name}-{cfg.chip.name}-bs{cfg.bs}"),
        parent_run_id=sweep.parent_run_id if sweep is not None else None,
        tags=tags,
    )
    active = ActiveRun(run.info.run_id, experiment)
    _stage_records.clear()
    facts = redact.tree(environment.capture(cfg.chip))
    try:
        safe_tree = redact.tree(config_tree)
        mlflow.log_params(run_params(config_tree, overrides or [], choices))
        mlflow.log_dict(safe_tree, "config/config.yaml")
        for path in sorted((run_dir / ".hydra").glob("*.yaml")):
            mlflow.log_text(redact.text(path.read_text()), f"config/hydra/{path.name}")
        yield active
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:  # recording the error must not keep the run from ending FAILED/KILLED
            mlflow.set_tag("error", redact.text(f"{type(error).__name__}: {error}")[:5000])
            mlflow.log_text(redact.text("".join(traceback.format_exception(error))),
                            "logs/traceback.txt")
            _log_record(facts)
            _log_file(run_dir)
        except Exception as logging_error:
            log.warning("could not record the error in MLflow: %s", logging_error)
        mlflow.end_run(status)
        raise
    else:
        _log_record(facts)
        active.summary_lines = _describe(cfg, active.run_id, sweep)
        _log_file(run_dir)
        mlflow.end_run("FINISHED")


def _log_record(facts: dict[str, Any]) -> None:
    """run.json: the environment and each stage's cache key, hit or miss and seconds; the tag
    `cache` says how many stages were hits."""
    mlflow.log_dict({"environment": facts, "stages": dict(_stage_records)}, "run.json")
    # logged last, so the run page's metrics (in logging order) start with the figures
    mlflow.log_metrics(readable({f"time_{name}_s": record["seconds"]
                                 for name, record in _stage_records.items()}))
    hits = sum(s["cache"] == "hit" for s in _stage_records.values())
    if _stage_records:
        mlflow.set_tag("cache", f"{hits}/{len(_stage_records)} hit")


def run_record(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """A run's run.json: {"environment": {...}, "stages": {stage: {"cache", "key", "seconds"}}}."""
    import mlflow.artifacts

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="run.json",
                                               tracking_uri=tracking_uri)
    return json.loads(Path(path).read_text())


def _describe(cfg: RunConfig, run_id: str, sweep: SweepLink | None) -> list[str]:
    """Compare the run with its published figures: metrics `top1_delta_pt`, `top5_delta_pt`,
    `fps_vs_published`, tag `accuracy.verdict`, and the run's Description (what the run page
    shows first); the lines to print."""
    data = MlflowClient().get_run(run_id).data
    published = report.Published.from_config(cfg.model.published, cfg.chip.name)
    dataset = report.describe_dataset(cfg.dataset)
    comparison = report.compare(published, cfg.bs, data.metrics,
                                report.not_comparable(data.tags.get("weights_kind", ""), dataset))
    if comparison.metrics():
        mlflow.log_metrics(comparison.metrics())
    if "throughput_fps" in data.metrics:
        # the same figure at step = bs: MLflow's line chart (x: step) of runs grouped by model
        # is then throughput against batch size, one line per model (docs/tracking.md)
        mlflow.log_metric(BY_BS_METRIC, data.metrics["throughput_fps"], step=cfg.bs)
    if comparison.deltas is not None:
        mlflow.set_tag(report.ACCURACY_TAG, comparison.accuracy)
    title = f"{cfg.model.name} on {cfg.chip.name}, bs {cfg.bs}, dataset {dataset}"
    if cfg.model.preprocess.on_device:
        title += ", preprocessing on the device (uint8 input)"
    if sweep is not None:
        title += f" (job {sweep.job_num} of sweep run {sweep.parent_run_id})"
    metrics = {**data.metrics, **comparison.metrics()}
    summary = report.run_summary(title, metrics, data.tags, published, comparison)
    mlflow.set_tag("mlflow.note.content", summary)
    return report.terminal_lines(published, comparison, metrics)


def judge_trial(cfg: RunConfig, metrics: dict[str, float]) -> search.Judgement:
    """A search trial (runner/search.py): the run judged against search.* and the guide's
    accuracy rule, tagged `search.*` on the active run."""
    published = report.Published.from_config(cfg.model.published, cfg.chip.name)
    dataset = report.describe_dataset(cfg.dataset)
    accuracy = report.compare(published, cfg.bs, metrics, report.not_comparable(
        weights.source(cfg.model).kind, dataset))
    judgement = search.judge(cfg.search, metrics, accuracy)
    mlflow.set_tags({k: redact.text(v) for k, v in judgement.tags().items()})
    return judgement


def ui_command(tracking_uri: str) -> str:
    """The command that shows this store in a browser (a tracking server is open already)."""
    if urlparse(tracking_uri).scheme in ("http", "https"):
        return f"open {redact.text(tracking_uri)}"
    installed = Path(sys.executable).with_name("mlflow")
    program = "mlflow" if shutil.which("mlflow") == str(installed) or not installed.exists() \
        else str(installed)
    return f"{program} ui --backend-store-uri {redact.text(tracking_uri)}"


# MLflow 3's UI opens in its GenAI mode, whose start page has no runs; runs, their metrics and
# Descriptions are its "model training" mode, which this query parameter selects
RUNS_VIEW = "?workflowType=machine_learning"


def run_url(tracking_uri: str, experiment: str, run_id: str) -> str:
    """The run's page in MLflow 3's runs view: on the tracking server, or on what `mlflow ui`
    serves by default."""
    scheme = urlparse(tracking_uri).scheme
    base = redact.text(tracking_uri).rstrip("/") if scheme in ("http", "https") \
        else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment}/runs/{run_id}{RUNS_VIEW}"


def _log_file(run_dir: Path) -> None:
    for path in run_dir.glob("*.log"):
        mlflow.log_text(redact.text(path.read_text(errors="replace")), f"logs/{path.name}")


def record_invalid_config(cfg: DictConfig, error: Exception, sweep: SweepLink,
                          choices: dict[str, Any] | None = None) -> None:
    """A FAILED run for a sweep job whose config was rejected before its run could start, so the
    sweep's table lists it. Best effort: the job's own error line is what the user must see."""
    def raw(key: str) -> str:
        return str(OmegaConf.select(cfg, key, default="?"))

    try:
        settings = MlflowConfig(raw("mlflow.tracking_uri"), raw("mlflow.artifact_location"),
                                raw("mlflow.experiment"))
        client = MlflowClient(tracking_uri=settings.tracking_uri)
        tags = {key: raw(f"{key}.name") for key in ("model", "chip", "dataset")}
        run = client.create_run(
            experiment_id(settings),
            run_name=f"{tags['model']}-{tags['chip']}-bs{raw('bs')}",
            tags={**tags, "mlflow.parentRunId": sweep.parent_run_id,
                  "sweep.job_num": str(sweep.job_num),
                  "error": redact.text(f"{type(error).__name__}: {error}")[:5000]},
        )
        try:  # the params are worth having, not worth leaving the run RUNNING for
            tree = OmegaConf.to_container(cfg, resolve=True)
            assert isinstance(tree, dict)
            for key, value in run_params(tree, sweep.overrides, choices).items():
                client.log_param(run.info.run_id, key, value)
        except Exception as failure:
            log.warning("could not log the failed job's params: %s", failure)
        client.set_terminated(run.info.run_id, "FAILED")
    except Exception as failure:  # the store is unusable too: the job's error line still stands
        log.warning("could not record the failed job in MLflow: %s", failure)


def gate_run(gate: Any, run_id: str) -> None:
    """compare.baseline on one run: its comparison printed and tagged on the run; exit status 1
    when a figure of compare.fail_on REGRESSED (the run itself stays FINISHED)."""
    client = MlflowClient(tracking_uri=gate.tracking_uri)
    comparison = gate.judge([client.get_run(run_id)], run_id, "run")
    print(comparison.table(), end="")
    failure = gate.failure(comparison)
    client.set_tag(run_id, "compare.baseline", gate.baseline.source)
    client.set_tag(run_id, "compare.verdict", "REGRESSED" if failure else comparison.summary())
    if failure:
        print(f"runner: error: {failure}", file=sys.stderr)
        raise SystemExit(1)
