"""MLflow: one run per job, with the config as params and artifacts, metrics named the same in
every run (so runs compare), tags that say what was run where, and the right end status."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
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

from runner import environment, redact
from runner.cache import check_writable
from runner.config import MlflowConfig, RunConfig
from runner.errors import TrackingError
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


@dataclass(frozen=True)
class SweepLink:
    """What a sweep job's run needs to hang under its sweep's parent run."""

    parent_run_id: str
    job_num: int
    overrides: list[str] = field(default_factory=list)  # the job's command-line overrides


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
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(f"{db.name}-init.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def override_params(overrides: list[str]) -> dict[str, str]:
    """`override.<key>`: command-line overrides as written (a sweep's as `bs=1,4`), named alike in
    every run of a sweep so the MLflow compare view lines them up."""
    params = {}
    for line in overrides:
        key, _, value = line.partition("=")
        params[f"override.{key.lstrip('+~')}"] = value
    return params


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
    return {name: redact.text(value) for name, value in tags.items()}


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
        mlflow.log_dict(redact.tree(output.info), f"stages/{record.name}/info.json")


@contextmanager
def tracked_run(cfg: RunConfig, config_tree: dict[str, Any], run_dir: Path,
                sweep: SweepLink | None = None) -> Iterator[str]:
    """An active MLflow run; FINISHED on success, FAILED (KILLED on Ctrl-C) with the error.
    In a sweep, the run is nested under the sweep's parent run."""
    tags = run_tags(cfg)
    if sweep is not None:
        tags["sweep.job_num"] = str(sweep.job_num)
    check_store(cfg.mlflow)
    run = mlflow.start_run(
        experiment_id=experiment_id(cfg.mlflow),
        run_name=redact.text(f"{cfg.model.name}-{cfg.chip.name}-bs{cfg.bs}"),
        parent_run_id=sweep.parent_run_id if sweep is not None else None,
        tags=tags,
    )
    try:
        safe_tree = redact.tree(config_tree)
        params = {k: json.dumps(v) if isinstance(v, list | dict) else v
                  for k, v in flatten(safe_tree).items()}
        if sweep is not None:
            params.update(redact.tree(override_params(sweep.overrides)))
        mlflow.log_params(params)
        mlflow.log_dict(safe_tree, "config/config.yaml")
        for path in sorted((run_dir / ".hydra").glob("*.yaml")):
            mlflow.log_text(redact.text(path.read_text()), f"config/hydra/{path.name}")
        yield run.info.run_id
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        try:  # recording the error must not keep the run from ending FAILED/KILLED
            mlflow.set_tag("error", redact.text(f"{type(error).__name__}: {error}")[:5000])
            mlflow.log_text(redact.text("".join(traceback.format_exception(error))),
                            "logs/traceback.txt")
            _log_file(run_dir)
        except Exception as logging_error:
            log.warning("could not record the error in MLflow: %s", logging_error)
        mlflow.end_run(status)
        raise
    else:
        _log_file(run_dir)
        mlflow.end_run("FINISHED")


def _log_file(run_dir: Path) -> None:
    for path in run_dir.glob("*.log"):
        mlflow.log_text(redact.text(path.read_text(errors="replace")), f"logs/{path.name}")


def record_invalid_config(cfg: DictConfig, error: Exception, sweep: SweepLink) -> None:
    """A FAILED run for a sweep job whose config was rejected before its run could start, so the
    sweep's table lists it. Best effort: the job's own error line is what the user must see."""
    def raw(key: str) -> str:
        return str(OmegaConf.select(cfg, key, default="?"))

    try:
        settings = MlflowConfig(raw("mlflow.tracking_uri"), raw("mlflow.artifact_location"),
                                raw("mlflow.experiment"))
        client = MlflowClient(tracking_uri=settings.tracking_uri)
        tags = {key: raw(key if key == "bs" else f"{key}.name")
                for key in ("model", "chip", "bs", "dataset")}
        run = client.create_run(
            experiment_id(settings),
            run_name=f"{tags['model']}-{tags['chip']}-bs{tags['bs']}",
            tags={**tags, "mlflow.parentRunId": sweep.parent_run_id,
                  "sweep.job_num": str(sweep.job_num),
                  "error": redact.text(f"{type(error).__name__}: {error}")[:5000]},
        )
        for key, value in redact.tree(override_params(sweep.overrides)).items():
            client.log_param(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FAILED")
    except Exception as failure:  # the store is unusable too: the job's error line still stands
        log.warning("could not record the failed job in MLflow: %s", failure)
