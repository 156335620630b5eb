"""What the benchmark scripts share: composing a run config, making the model and dataset
through the runner's own cached stages, and printing figures next to their targets."""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import resource
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
from hydra import compose, initialize_config_dir

from runner import config, device_lock, environment, page_cache, pipeline
from runner.config import PROJECT_ROOT, RunConfig

DEFAULT_MODELS = ("alexnet", "inceptionv4")


def model_arguments(parser: argparse.ArgumentParser, bs: tuple[int, ...]) -> None:
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="model config names (conf/model/<name>.yaml); missing ones are "
                        "reported as skipped")
    parser.add_argument("--bs", nargs="+", type=int, default=list(bs), help="batch sizes")
    parser.add_argument("--threads", type=int, default=0,
                        help="chip.threads: intra-op threads (0: the runtime's default)")
    parser.add_argument("--cache-dir", default=str(PROJECT_ROOT / "outputs" / "cache"),
                        help="the runner's stage cache (exported models are reused)")


def available(models: list[str]) -> list[str]:
    found = []
    for name in models:
        if (PROJECT_ROOT / "conf" / "model" / f"{name}.yaml").is_file():
            found.append(name)
        else:
            print(f"skipped: {name} (conf/model/{name}.yaml does not exist in this checkout)")
    return found


def run_config(*overrides: str) -> RunConfig:
    config.register()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return config.validate(compose("config", overrides=list(overrides)))


def base_overrides(model: str, bs: int, args: argparse.Namespace) -> list[str]:
    return [f"model={model}", f"bs={bs}", "model.weights=random", "dataset=synthetic",
            f"chip.threads={args.threads}", f"paths.cache_dir={args.cache_dir}"]


def make(cfg: RunConfig, stages: list[str]) -> dict[str, Path]:
    """Run `stages` through the runner's cache; artifact name -> path."""
    cfg.stage.stages = stages
    result = pipeline.run(pipeline.plan(cfg), cfg.cache_dir)
    paths = {}
    for record in result.stages:
        for name in record.entry.output.artifacts:
            paths[name] = record.entry.artifact(name)
    return paths


def header(title: str, method: list[str]) -> None:
    print(f"== {title}")
    commit = environment.git_commit()  # "<sha>-dirty" with uncommitted changes: keep the flag
    short = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
    print(f"   host {environment.host_id()}, commit {short}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    for line in method:
        print(f"   {line}")


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value <= target
    return f"{'met' if met else 'MISSED'} (target {'>=' if higher_is_better else '<='} {target})"


def mean(values: list[float]) -> float:
    return statistics.fmean(values)


def machine_probe_ms(rounds: int = 5) -> float:
    """Median milliseconds of a fixed pure-Python loop on one core: how fast this machine is
    right now, apart from any model. On a shared VM it moves with the host's other tenants;
    when it moves as much as a figure does, the figure's spread is the machine's."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for value in range(300_000):
            total += value * value
        times.append(1000.0 * (time.perf_counter() - started))
    return statistics.median(times)


def cpu_mark() -> Any:
    """A sample of all cores' times, to take `stolen_since` from."""
    return psutil.cpu_times()


def cpu_seconds(*who: int) -> tuple[float, float]:
    """(user, kernel) CPU seconds of `who`: resource.RUSAGE_SELF and/or RUSAGE_CHILDREN (the
    children waited for: a stage's decode workers, a CLI command). Kernel apart: file reads and
    writes are spent there, and on this VM they cost more in some hours than in others."""
    usages = [resource.getrusage(whom) for whom in who]
    return sum(u.ru_utime for u in usages), sum(u.ru_stime for u in usages)


def cpu_since(mark: tuple[float, float], *who: int) -> tuple[float, float]:
    """(user, kernel) CPU seconds of `who` since `mark`, a `cpu_seconds(*who)`."""
    user, kernel = cpu_seconds(*who)
    return user - mark[0], kernel - mark[1]


def read_once(paths: Iterable[Path]) -> int:
    """Read every file once, so that a pass timed next finds them in the page cache (this VM
    evicts idle file pages within minutes, docs/results.md); their bytes."""
    return sum(len(path.read_bytes()) for path in paths)


def evict(paths: Iterable[Path]) -> int:
    """Drop the files' pages from the page cache (runner.page_cache.release), so that a pass
    timed next reads them from the disk, as a first run over ImageNet does; their bytes. Dirty
    pages stay: `os.sync()` first. `resident_fraction` says whether it worked (not on tmpfs)."""
    return sum(page_cache.release(path) for path in paths)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    return libc


def resident_fraction(paths: Iterable[Path]) -> float:
    """The share of the files' pages in the page cache, from mincore(2) on a mapping of each
    file that is never touched: asking reads nothing. (A read with RWF_NOWAIT, which returns only
    cached bytes, is no probe: on this VM's kernel it starts read-ahead of the rest, and the file
    is cached a moment later.)"""
    libc, page = _libc(), os.sysconf("SC_PAGE_SIZE")
    cached = total = 0
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(descriptor).st_size
            if size == 0:
                continue
            address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, descriptor, 0)
            if address in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
            try:
                pages = (size + page - 1) // page
                vector = ctypes.create_string_buffer(pages)
                if libc.mincore(address, size, vector) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
                cached += sum(byte & 1 for byte in vector.raw)
                total += pages
            finally:
                libc.munmap(address, size)
        finally:
            os.close(descriptor)
    return cached / total if total else 1.0


def stolen_since(mark: Any) -> float:
    """Percent of all cores' time since `mark` that the hypervisor gave to other guests while
    this VM wanted to run ("steal"; 0 on bare metal): figures taken meanwhile are low by about
    that much, whatever the load average says."""
    return device_lock.CpuUse.between(mark, psutil.cpu_times(), 0.0).stolen_pct


def percents(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}%" for v in values)
