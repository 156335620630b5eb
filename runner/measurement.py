"""How throughput and latency are measured: warm-up, stopping rule, stability verdict.

Kept apart from any runtime (MLPerf LoadGen's split of test settings from the system under test):
`measure` times a callable with a clock it is given, so the method is tested with fake clocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.config import BenchmarkConfig

Clock = Callable[[], int]  # nanoseconds


@dataclass
class Measurement:
    batch_size: int
    compute_ms: list[float]  # one entry per timed call, in order
    wall_s: float  # from the first timed call's start to the last one's end
    warmup_iters: int
    warmup_s: float
    trials: int
    stable: bool
    window_fps: list[float] = field(default_factory=list)
    spread: float = 0.0  # (max - min) / mean of the last `stable_windows` window throughputs

    @property
    def iterations(self) -> int:
        return len(self.compute_ms)

    @property
    def throughput_fps(self) -> float:
        """ais_bench's figure: 1000 * batchsize / mean(compute ms)."""
        return 1000.0 * self.batch_size / float(np.mean(self.compute_ms))

    @property
    def wall_fps(self) -> float:
        """Images per second of wall-clock over the timed loop (gaps between calls included)."""
        return self.batch_size * self.iterations / self.wall_s

    def latency_ms(self, percentile: float) -> float:
        return float(np.percentile(self.compute_ms, percentile))

    def metrics(self) -> dict[str, float]:
        return {
            "throughput_fps": self.throughput_fps,
            "wall_fps": self.wall_fps,
            "latency_ms_mean": float(np.mean(self.compute_ms)),
            "latency_ms_min": float(np.min(self.compute_ms)),
            "latency_ms_max": float(np.max(self.compute_ms)),
            "latency_ms_p50": self.latency_ms(50),
            "latency_ms_p90": self.latency_ms(90),
            "latency_ms_p99": self.latency_ms(99),
            "benchmark_iterations": float(self.iterations),
            "benchmark_stable": float(self.stable),
            "benchmark_window_spread": self.spread,
        }


def window_throughputs(compute_ms: list[float], windows: int, batch_size: int) -> list[float]:
    """Throughput of each of `windows` consecutive, equal-count slices of the timed calls."""
    parts = np.array_split(np.asarray(compute_ms), min(windows, len(compute_ms)))
    return [1000.0 * batch_size * len(p) / float(np.sum(p)) for p in parts]


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / float(np.mean(values))


def measure(
    run_once: Callable[[], Any],
    settings: BenchmarkConfig,
    batch_size: int,
    clock: Clock = time.perf_counter_ns,
) -> Measurement:
    """Warm up, then time `run_once` until both min_iters and min_duration_s are met (or
    max_duration_s passes); repeat the timed trial while its last windows disagree."""
    warmup_start = clock()
    warmup_iters = 0
    while warmup_iters < settings.warmup_iters or (
        clock() - warmup_start < settings.warmup_min_s * 1e9
    ):
        run_once()
        warmup_iters += 1
    warmup_s = (clock() - warmup_start) / 1e9

    for trial in range(1, settings.max_trials + 1):
        compute_ms: list[float] = []
        trial_start = clock()
        while True:
            before = clock()
            run_once()
            after = clock()
            compute_ms.append((after - before) / 1e6)
            elapsed_s = (after - trial_start) / 1e9
            done = len(compute_ms) >= settings.min_iters and elapsed_s >= settings.min_duration_s
            if done or elapsed_s >= settings.max_duration_s:
                break
        per_window = window_throughputs(compute_ms, settings.windows, batch_size)
        last = per_window[-settings.stable_windows :]
        trial_spread = spread(last)
        stable = trial_spread <= settings.max_spread
        if stable or trial == settings.max_trials:
            return Measurement(
                batch_size=batch_size,
                compute_ms=compute_ms,
                wall_s=elapsed_s,
                warmup_iters=warmup_iters,
                warmup_s=warmup_s,
                trials=trial,
                stable=stable,
                window_fps=per_window,
                spread=trial_spread,
            )
    raise AssertionError("unreachable: the last trial always returns")


def method_description(settings: BenchmarkConfig, timed_span: str) -> dict[str, Any]:
    """What a reader needs to know to interpret (and reproduce) the figures."""
    return {
        "timer": "time.perf_counter_ns (host wall clock)",
        "timed_span": timed_span,
        "warmup": f">= {settings.warmup_iters} calls and >= {settings.warmup_min_s} s, excluded",
        "stopping_rule": f">= {settings.min_iters} calls and >= {settings.min_duration_s} s "
        f"(cap {settings.max_duration_s} s)",
        "stability": f"last {settings.stable_windows} of {settings.windows} windows within "
        f"{settings.max_spread:.0%} of their mean, up to {settings.max_trials} trials",
        "throughput_fps": "1000 * bs / mean(compute ms), as ais_bench",
        "wall_fps": "bs * calls / wall seconds of the timed loop",
        "percentiles": "numpy.percentile, linear interpolation",
        "input": f"{settings.input} tensor prepared before timing",
    }
