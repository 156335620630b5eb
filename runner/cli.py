"""`python -m runner`: compose the config with Hydra, run the pipeline, track it in MLflow."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
import psutil
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import config, interrupts, pipeline, redact, sweep, tracking
from runner.cache import STORAGE_ERRNOS, check_writable
from runner.errors import ConfigError, RunnerError

log = logging.getLogger("runner")

config.register()

SUMMARY_METRICS = ("top1", "top5", "throughput_fps", "latency_ms_p50", "latency_ms_p99", "e2e_fps")
DEBUG_HINT = "rerun with debug=true for the traceback"
DEBUG_OVERRIDE = re.compile(r"\+{0,2}debug=(true|yes|on|1)", re.IGNORECASE)


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


def check_host(cfg: config.RunConfig) -> None:
    """What this host cannot do, before any work: a batch larger than its memory (a MemoryError
    after the export otherwise), CPU "devices" (worker processes) beyond its cores."""
    size = cfg.model.input_size
    batch_bytes = cfg.bs * 3 * size * size * 4  # one float32 input batch; the model needs more
    memory = psutil.virtual_memory().total
    if batch_bytes > memory:
        raise ConfigError(
            f"bs={cfg.bs}: one input batch of {cfg.bs}x3x{size}x{size} float32 is "
            f"{batch_bytes / 1e9:.1f} GB, more than this host's {memory / 1e9:.1f} GB of memory; "
            "lower bs"
        )
    cores = os.cpu_count() or 1
    if cfg.chip.device_type == "cpu" and max(cfg.chip.devices) >= cores:
        raise ConfigError(
            f"chip.devices={cfg.chip.devices}: on the CPU a device is a worker process, one per "
            f"core at most; this host has {cores} cores, so ids 0..{cores - 1}"
        )


def run_job(cfg: DictConfig) -> dict[str, float]:
    """One job: validate, run every configured stage inside an MLflow run; the metrics."""
    link = sweep.current_link()  # set when this job is part of a sweep (`-m`)
    try:
        run_cfg = config.validate(cfg)
    except ConfigError as error:
        if link is not None:  # so the sweep's table lists it with the other jobs
            tracking.record_invalid_config(cfg, error, link)
        raise
    check_host(run_cfg)
    check_writable(run_cfg.cache_dir, "paths.cache_dir")
    tree: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # Hydra wrote the command line's overrides there verbatim, passwords included
    hydra_files = sorted((run_dir / ".hydra").glob("*.yaml"))
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        hydra_files.append(Path(HydraConfig.get().sweep.dir) / "multirun.yaml")
    redact.rewrite_files(hydra_files)
    with tracking.tracked_run(run_cfg, tree, run_dir, sweep=link) as run_id:
        log.info("MLflow run %s (%s)", run_id, redact.text(run_cfg.mlflow.tracking_uri))
        result = pipeline.run(run_cfg, on_stage=tracking.log_stage)
    print(summary_table(run_cfg, result))
    return result.metrics


def _close_progress_bars() -> None:
    """A progress bar an error interrupted would share its line with the error message."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:1000]


def _raised_by_hydra(error: BaseException) -> bool:
    """Whether Hydra's own code raised `error` (a plain ValueError for some bad overrides)."""
    frame = None
    trace = error.__traceback__
    while trace is not None:
        frame, trace = trace.tb_frame, trace.tb_next
    return frame is not None and str(frame.f_globals.get("__name__")).startswith("hydra.")


def _raised_in(error: BaseException, functions: set[str]) -> bool:
    trace = error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_name in functions:
            return True
        trace = trace.tb_next
    return False


def describe(error: BaseException) -> str:
    """One line for any error: a RunnerError's own message, Hydra's multi-line composition
    errors condensed, anything else named as unexpected, with the way to see its traceback."""
    if isinstance(error, RunnerError):
        return _first_line(str(error))
    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return (f"{group}={name} is not a known {group}: choose one of "
                f"{', '.join(error.options)} (the files in conf/{group}/)")
    if isinstance(error, HydraException | OmegaConfBaseException) or _raised_by_hydra(error):
        parts = [_first_line(str(error)).rstrip(".")]
        if isinstance(error.__cause__, OmegaConfBaseException):  # the reason, with the key
            parts.append(_first_line(str(error.__cause__)))
        return (": ".join(p for p in parts if p)
                + " (python -m runner --help lists the groups, --cfg job the keys)")
    folders = "hydra.run.dir, paths.cache_dir, mlflow.artifact_location"
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        where = f" {error.filename}" if error.filename else " an output file"
        return (f"cannot write{where} ({error.strerror or os.strerror(error.errno)}): free "
                f"space or choose another folder ({folders})")
    if isinstance(error, OSError) and error.filename and _raised_in(error, {"mkdir",
                                                                            "makedirs"}):
        return (f"cannot create the folder {error.filename} ({error.strerror}): choose another "
                f"folder ({folders})")
    if isinstance(error, MemoryError):
        return (f"out of memory ({_first_line(str(error)) or 'MemoryError'}): lower bs, or "
                "preprocess.workers / chip.devices, which each hold their own buffers")
    return f"unexpected {type(error).__name__}: {_first_line(str(error))} ({DEBUG_HINT})"


def _remember_secrets(cfg: DictConfig) -> None:
    """Secrets of this job's config, masked in every text from here on (see `redact`)."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # an interpolation that fails is reported by validation
        resolved = OmegaConf.to_container(cfg, resolve=False)
    redact.remember(resolved)


@hydra.main(version_base="1.3", config_path=str(config.PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> dict[str, float] | None:
    _remember_secrets(cfg)
    redact.install_log_filter()
    try:
        return run_job(cfg)
    except Exception as error:
        if cfg.get("debug"):
            print(redact.text(traceback.format_exc()), end="", file=sys.stderr)
        message = redact.text(describe(error))
        log.error("%s", message)
        _close_progress_bars()
        print(f"runner: error: {message}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return None  # the other jobs of the sweep still run
        raise SystemExit(1) from None


def _validate_printed_config() -> None:
    """`--cfg job` prints the config and runs nothing: it must still say (exit 1) when that
    config would be refused, or `--cfg job bs=0` reads as a valid config."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args()
    if not args.cfg or args.multirun:  # a sweep's overrides are lists of values, not one config
        return
    overrides = [o for o in args.overrides if not o.lstrip("+~").startswith("hydra.")]
    with initialize_config_dir(config_dir=str(config.PROJECT_ROOT / "conf"), version_base="1.3"):
        config.validate(compose(args.config_name or "config", overrides=overrides))


def entry() -> None:
    """`python -m runner`: Hydra's main, with every error as one line `runner: error: ...` and
    exit status 1 (tracebacks with debug=true or HYDRA_FULL_ERROR=1), and Ctrl-C or SIGTERM as
    an interruption that keeps finished work (exit status 128 + the signal number)."""
    interrupts.install()
    debug = (any(DEBUG_OVERRIDE.fullmatch(arg) for arg in sys.argv[1:])
             or os.environ.get("HYDRA_FULL_ERROR") == "1")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors here instead of printing them
    try:
        main()
        _validate_printed_config()
    except KeyboardInterrupt:
        signum = interrupts.received[-1] if interrupts.received else signal.SIGINT
        _close_progress_bars()
        print(f"runner: interrupted by {signal.Signals(signum).name}: finished stages and chunks "
              "are kept in the cache; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    except Exception as error:
        if debug:
            raise
        print(f"runner: error: {redact.text(describe(error))}", file=sys.stderr)
        raise SystemExit(1) from None
