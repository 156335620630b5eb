"""`python -m runner`: compose the config with Hydra, run the pipeline, track it in MLflow."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import psutil
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import config, interrupts, redact, search, sweep
from runner.errors import ConfigError, RunnerError

if TYPE_CHECKING:  # numpy comes with them: imported once there is work to do (fast --help)
    from runner import pipeline

log = logging.getLogger("runner")

config.register()

SUMMARY_METRICS = ("top1", "top5", "throughput_fps", "latency_ms_p50", "latency_ms_p99", "e2e_fps")
DEBUG_HINT = "rerun with traceback=true for the traceback"
DEBUG_OVERRIDE = re.compile(r"\+{0,2}traceback=(true|yes|on|1)", re.IGNORECASE)


def summary_table(cfg: config.RunConfig, result: pipeline.PipelineResult) -> str:
    lines = [
        f"runner: {cfg.model.name} on {cfg.chip.name}, bs={cfg.bs}, dataset={cfg.dataset.name}"
        + (", preprocessing on the device (uint8 input)" if cfg.model.preprocess.on_device
           else ""),
        f"  {'stage':<11}{'cache':<7}{'seconds':>9}",
    ]
    for record in result.stages:
        cache = "reused" if record.reused else "hit" if record.entry.hit else "miss"
        lines.append(f"  {record.name:<11}{cache:<7}{record.seconds:>9.2f}"
                     + (f"  {record.reuse_note()}" if record.reused else ""))
    metrics = result.metrics
    shown = [(k, metrics[k]) for k in SUMMARY_METRICS if k in metrics]
    if shown:
        lines.append("  " + "  ".join(f"{k}={v:.2f}" for k, v in shown))
    coverage = metrics.get("parity_coverage")
    if coverage is not None and coverage < 1:
        lines.append(f"  parity: a sample of {metrics['parity_images']:.0f} images "
                     f"({coverage:.1%} of the dataset, parity.sample)")
    for record in result.stages:
        verdict = record.entry.output.info.get("verdict")
        if verdict:
            reasons = "; ".join(verdict["reasons"])
            lines.append(f"  {record.name}: Result is : {verdict['verdict']}"
                         + (f" ({reasons})" if reasons else "")
                         + (" [reused]" if record.reused else ""))
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


def _redact_hydra_files() -> None:
    """Hydra wrote the command line's overrides into the run folder verbatim, passwords included:
    mask them there (and in a sweep's multirun.yaml)."""
    hydra_cfg = HydraConfig.get()
    hydra_files = sorted((Path(hydra_cfg.runtime.output_dir) / ".hydra").glob("*.yaml"))
    if hydra_cfg.mode == RunMode.MULTIRUN:
        hydra_files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    redact.rewrite_files(hydra_files)


def _sweeper_target() -> str | None:
    """The sweeper running this job (the job's own config has no `hydra` node)."""
    return OmegaConf.select(HydraConfig.get(), "sweeper._target_", default=None)


def run_job(cfg: DictConfig) -> dict[str, float] | float:
    """One job: validate and plan (every check that needs no work), then run every stage inside
    an MLflow run; the metrics, or in a search (runner/search.py) the objective the sweeper
    maximizes."""
    from runner import pipeline
    from runner.cache import check_writable

    link = sweep.current_link()  # set when this job is part of a sweep (`-m`)
    _redact_hydra_files()  # first: a job refused below keeps its files too
    try:
        run_cfg = config.validate(cfg)
        searching = search.active(run_cfg, _sweeper_target())
        if searching:
            search.check(run_cfg)
        check_host(run_cfg)
        check_writable(run_cfg.cache_dir, "paths.cache_dir")
        planned = pipeline.plan(run_cfg)
        gate = None
        if run_cfg.compare.baseline is not None and link is None:  # a sweep gates in its parent
            from runner.compare import Gate

            gate = Gate.setup(run_cfg.compare.baseline, run_cfg.compare.fail_on,
                              run_cfg.mlflow.tracking_uri, run_cfg.compare.strict)
    except RunnerError as error:
        if link is not None:  # so the sweep's table lists it with the other jobs
            from runner import tracking

            tracking.record_invalid_config(cfg, error, link,
                                           dict(HydraConfig.get().runtime.choices))
        raise
    from runner import tracking  # MLflow's import is slow: only once there is a run to track

    tree: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with tracking.tracked_run(run_cfg, tree, run_dir, sweep=link,
                              overrides=list(hydra_cfg.overrides.task),
                              choices=dict(hydra_cfg.runtime.choices)) as run:
        log.info("MLflow run %s (%s)", run.run_id, redact.text(run_cfg.mlflow.tracking_uri))
        result = pipeline.run(planned, run_cfg.cache_dir, on_stage=tracking.log_stage,
                              run_id=run.run_id, verify=run_cfg.cache.verify)
        trial = tracking.judge_trial(run_cfg, result.metrics) if searching else None
    print(summary_table(run_cfg, result))
    for line in run.summary_lines:
        print(line)
    if trial is not None:
        print(trial.line())
    if link is None:  # a sweep prints the command once, with its report
        print(f"runner: see it: {tracking.ui_command(run_cfg.mlflow.tracking_uri)}, then open "
              f"{tracking.run_url(run_cfg.mlflow.tracking_uri, run.experiment_id, run.run_id)}")
    if gate is not None:
        tracking.gate_run(gate, run.run_id)
    return result.metrics if trial is None else trial.returned()


HELP_FLAGS = ("--help", "-h")


def fast_help(args: list[str]) -> str | None:
    """Hydra's `--help` page, or None when `args` need Hydra's own (other flags).

    The same template and values, but the groups are read from conf/: Hydra lists every group's
    options (its own hydra/* groups too) through a deep copy of its whole config repository per
    group, some 80 copies, 2-3 s of a 2-core machine, for 6 lines of output."""
    import string

    from hydra import compose, initialize_config_dir

    flags = [a for a in args if a.startswith("-")]
    if not set(flags) <= {*HELP_FLAGS, "--resolve"}:
        return None
    conf = config.PROJECT_ROOT / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=[a for a in args if a not in flags],
                      return_hydra_config=True)
    groups = sorted({p.parent.relative_to(conf).as_posix() for p in conf.rglob("*.yaml")
                     if p.parent != conf} - {""})
    app_groups = [g for g in groups if g != "hydra" and not g.startswith("hydra/")]
    listing = "".join(f"{g}: {', '.join(sorted(p.stem for p in (conf / g).glob('*.yaml')))}\n"
                      for g in app_groups)
    template = string.Template(str(cfg.hydra.help.template))
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import get_args_parser

    return template.substitute(
        FLAGS_HELP=Hydra.format_args_help(get_args_parser()),
        HYDRA_CONFIG_GROUPS="".join(f"{g}: ...\n" for g in groups if g not in app_groups),
        APP_CONFIG_GROUPS=listing,
        CONFIG=OmegaConf.to_yaml(job, resolve="--resolve" in flags),
    )


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
    from runner.cache import STORAGE_ERRNOS

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
def main(cfg: DictConfig) -> dict[str, float] | float | None:
    _remember_secrets(cfg)
    redact.install_log_filter()
    try:
        return run_job(cfg)
    except Exception as error:
        if cfg.get("traceback"):
            print(redact.text(traceback.format_exc()), end="", file=sys.stderr)
        message = redact.text(describe(error))
        log.error("%s", message)
        _close_progress_bars()
        print(f"runner: error: {message}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # the other jobs of the sweep still run; a search ranks this trial last
            return search.INFEASIBLE if search.active_in(cfg, _sweeper_target()) else None
        raise SystemExit(getattr(error, "exit_status", 1)) from None  # compare.baseline: 2


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
    exit status 1 (tracebacks with traceback=true or HYDRA_FULL_ERROR=1), and Ctrl-C or SIGTERM as
    an interruption that keeps finished work (exit status 128 + the signal number).
    `python -m runner compare BASELINE CANDIDATE` is runner.compare's (exit status 0, 1 or 2)."""
    if sys.argv[1:2] == ["compare"]:  # a subcommand of its own: no Hydra (docs/compare.md)
        from runner import compare

        compare.main(sys.argv[2:])
    interrupts.install()
    debug = (any(DEBUG_OVERRIDE.fullmatch(arg) for arg in sys.argv[1:])
             or os.environ.get("HYDRA_FULL_ERROR") == "1")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors here instead of printing them
    try:
        if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
            page = fast_help(sys.argv[1:])
            if page is not None:
                print(page)
                return
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
