"""How throughput and latency are measured: warm-up, stopping rule, stability verdict, repeats.

Kept apart from any runtime (MLPerf LoadGen's split of test settings from the system under test):
`measure` times a callable with a clock it is given, so the method is tested with fake clocks.

One measurement = one warm-up, then `repeats` timed runs back to back. A timed run calls until
both `min_iters` calls and `min_duration_s` seconds are reached (as LoadGen and trtexec stop), or
until `max_duration_s` caps it; its calls are split into `windows` and it is retried (up to
`max_trials`, earlier trials discarded) while its last `stable_windows` windows disagree by more
than `max_spread` (as perf_analyzer decides stability). The repeats give the run-to-run spread;
with `isolate_repeats` the benchmark (runner.device_benchmark) runs each repeat as a measurement
of its own in a fresh process and joins them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.config import BenchmarkConfig
from runner.device_lock import stolen_words

Clock = Callable[[], int]  # nanoseconds


@dataclass
class TimedRun:
    """One timed run: the calls of its last trial (earlier, unstable trials are discarded)."""

    batch_size: int
    compute_ms: list[float]  # one entry per timed call, in order
    wall_s: float  # from the first timed call's start to the last one's end
    trials: int
    stable: bool
    window_fps: list[float] = field(default_factory=list)
    spread: float = 0.0  # (max - min) / mean of the last `stable_windows` window throughputs
    capped: bool = False  # max_duration_s stopped it before min_iters and min_duration_s

    @property
    def iterations(self) -> int:
        return len(self.compute_ms)

    @property
    def throughput_fps(self) -> float:
        return 1000.0 * self.batch_size / float(np.mean(self.compute_ms))

    @property
    def wall_fps(self) -> float:
        return self.batch_size * self.iterations / self.wall_s

    def summary(self) -> dict[str, Any]:
        return {
            "throughput_fps": self.throughput_fps,
            "wall_fps": self.wall_fps,
            "iterations": self.iterations,
            "wall_s": self.wall_s,
            "trials": self.trials,
            "stable": self.stable,
            "window_spread": self.spread,
            "window_fps": self.window_fps,
            "capped": self.capped,
        }


@dataclass
class Measurement:
    batch_size: int
    warmup_iters: int
    warmup_s: float
    runs: list[TimedRun]  # the repeats, in order

    @property
    def compute_ms(self) -> list[float]:
        """Every timed call of every repeat, in order."""
        return [ms for run in self.runs for ms in run.compute_ms]

    @property
    def iterations(self) -> int:
        return sum(run.iterations for run in self.runs)

    @property
    def wall_s(self) -> float:
        return sum(run.wall_s for run in self.runs)

    @property
    def throughput_fps(self) -> float:
        """ais_bench's figure over all timed calls: 1000 * batchsize / mean(compute ms)."""
        return 1000.0 * self.batch_size / float(np.mean(self.compute_ms))

    @property
    def wall_fps(self) -> float:
        """Images per second of wall-clock over the timed loops (gaps between calls included)."""
        return self.batch_size * self.iterations / self.wall_s

    @property
    def stable(self) -> bool:
        return all(run.stable for run in self.runs)

    @property
    def capped(self) -> bool:
        return any(run.capped for run in self.runs)

    @property
    def trials(self) -> int:
        return sum(run.trials for run in self.runs)

    @property
    def spread(self) -> float:
        """The worst window spread of the repeats."""
        return max(run.spread for run in self.runs)

    @property
    def throughput_cv(self) -> float | None:
        """Run-to-run coefficient of variation of the repeats' throughput_fps (sample std / mean);
        None with a single repeat."""
        return coefficient_of_variation([run.throughput_fps for run in self.runs])

    def latency_ms(self, percentile: float) -> float:
        return float(np.percentile(self.compute_ms, percentile))

    def latency_cv(self, percentile: float) -> float | None:
        """Run-to-run coefficient of variation of the repeats' own latency percentile; None
        with a single repeat."""
        return coefficient_of_variation([float(np.percentile(run.compute_ms, percentile))
                                         for run in self.runs])

    def metrics(self) -> dict[str, float]:
        compute_ms = self.compute_ms
        metrics = {
            "throughput_fps": self.throughput_fps,
            "wall_fps": self.wall_fps,
            "latency_ms_mean": float(np.mean(compute_ms)),
            "latency_ms_min": float(np.min(compute_ms)),
            "latency_ms_max": float(np.max(compute_ms)),
            "latency_ms_p50": self.latency_ms(50),
            "latency_ms_p90": self.latency_ms(90),
            "latency_ms_p99": self.latency_ms(99),
            "benchmark_iterations": float(self.iterations),
            "benchmark_repeats": float(len(self.runs)),
            "benchmark_stable": float(self.stable),
            "benchmark_capped": float(self.capped),
            "benchmark_window_spread": self.spread,
        }
        cv = self.throughput_cv
        if cv is not None:
            metrics["throughput_cv"] = cv
        for percentile in (50, 99):  # a tail moves more than the mean: its own noise (compare)
            latency_cv = self.latency_cv(percentile)
            if latency_cv is not None:
                metrics[f"latency_ms_p{percentile}_cv"] = latency_cv
        return metrics


def window_throughputs(compute_ms: list[float], windows: int, batch_size: int) -> list[float]:
    """Throughput of each of `windows` consecutive, equal-count slices of the timed calls."""
    parts = np.array_split(np.asarray(compute_ms), min(windows, len(compute_ms)))
    return [1000.0 * batch_size * len(p) / float(np.sum(p)) for p in parts]


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / float(np.mean(values))


def coefficient_of_variation(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / np.mean(values))


def warm_up(run_once: Callable[[], Any], settings: BenchmarkConfig,
            clock: Clock) -> tuple[int, float]:
    """Call until both warmup_iters calls and warmup_min_s seconds are reached: (calls, seconds)."""
    start = clock()
    calls = 0
    while calls < settings.warmup_iters or clock() - start < settings.warmup_min_s * 1e9:
        run_once()
        calls += 1
    return calls, (clock() - start) / 1e9


def timed_run(run_once: Callable[[], Any], settings: BenchmarkConfig, batch_size: int,
              clock: Clock) -> TimedRun:
    """Time `run_once` until the stopping rule is met; retry while the last windows disagree."""
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
        trial_spread = spread(per_window[-settings.stable_windows :])
        stable = trial_spread <= settings.max_spread
        if stable or trial == settings.max_trials:
            return TimedRun(
                batch_size=batch_size,
                compute_ms=compute_ms,
                wall_s=elapsed_s,
                trials=trial,
                stable=stable,
                window_fps=per_window,
                spread=trial_spread,
                capped=not done,
            )
    raise AssertionError("unreachable: the last trial always returns")


def measure(
    run_once: Callable[[], Any],
    settings: BenchmarkConfig,
    batch_size: int,
    clock: Clock = time.perf_counter_ns,
) -> Measurement:
    """Warm up once, then `settings.repeats` timed runs back to back."""
    warmup_iters, warmup_s = warm_up(run_once, settings, clock)
    runs = [timed_run(run_once, settings, batch_size, clock) for _ in range(settings.repeats)]
    return Measurement(batch_size=batch_size, warmup_iters=warmup_iters, warmup_s=warmup_s,
                       runs=runs)


def repeats_isolated(settings: BenchmarkConfig) -> bool:
    """Whether each repeat runs in a fresh process (runner.device_benchmark); one repeat has no
    spread to isolate."""
    return settings.isolate_repeats and settings.repeats > 1


def method_description(settings: BenchmarkConfig, timed_span: str) -> dict[str, Any]:
    """What a reader needs to know to interpret (and reproduce) the figures."""
    return {
        "timer": "time.perf_counter_ns (host wall clock)",
        "timed_span": timed_span,
        "warmup": f">= {settings.warmup_iters} calls and >= {settings.warmup_min_s} s, excluded",
        "stopping_rule": f">= {settings.min_iters} calls and >= {settings.min_duration_s} s "
        f"(cap {settings.max_duration_s} s: benchmark_capped=1 when the cap ended a run)",
        "stability": f"last {settings.stable_windows} of {settings.windows} windows within "
        f"{settings.max_spread:.0%} of their mean, up to {settings.max_trials} trials per repeat",
        "repeats": f"{settings.repeats} timed runs, "
        + ("each in a fresh process after its own warm-up (benchmark.isolate_repeats)"
           if repeats_isolated(settings) else "back to back after one warm-up")
        + "; throughput_cv = sample std / mean of their throughput_fps (absent with 1 repeat)",
        "throughput_fps": "1000 * bs / mean(compute ms) over every timed call, as ais_bench",
        "wall_fps": "bs * calls / wall seconds of the timed loops",
        "percentiles": "numpy.percentile over every timed call, linear interpolation",
        "input": f"{settings.input} tensor prepared before timing",
    }


@dataclass
class Verdict:
    """MLPerf LoadGen's "Result is : VALID", for one benchmark: VALID only when every rule held."""

    reasons: list[str]  # every rule that failed, in words; empty when VALID

    @property
    def valid(self) -> bool:
        return not self.reasons

    @property
    def word(self) -> str:
        return "VALID" if self.valid else "INVALID"

    def line(self) -> str:
        return self.word if self.valid else f"INVALID ({'; '.join(self.reasons)})"


def judge(measurements: dict[int, Measurement], settings: BenchmarkConfig,
          busy_before_pct: float | None, busy_during_pct: float | None,
          stolen_before_pct: float | None = None,
          stolen_during_pct: float | None = None) -> Verdict:
    """The verdict on a benchmark (one measurement per device): stable windows, not capped, a
    spread across repeats within `max_cv` (with one repeat there is none to judge), and the
    device not busy with other work beyond `busy_threshold` before or during timing (other
    processes and, on a VM, the hypervisor's steal: the stolen part is named)."""
    reasons = []
    threshold_pct = 100.0 * settings.busy_threshold
    for device, measured in measurements.items():
        where = f"device {device}: " if len(measurements) > 1 else ""
        if not measured.stable:
            reasons.append(f"{where}unstable: the last {settings.stable_windows} windows spread "
                           f"{measured.spread:.1%} > benchmark.max_spread "
                           f"{settings.max_spread:.0%} in {measured.trials} trials")
        if measured.capped:
            reasons.append(f"{where}capped: benchmark.max_duration_s={settings.max_duration_s:g} "
                           "ended timing before min_iters and min_duration_s were reached")
        cv = measured.throughput_cv
        if cv is not None and not cv <= settings.max_cv:
            reasons.append(f"{where}spread across repeats: throughput_cv {cv:.1%} > "
                           f"benchmark.max_cv {settings.max_cv:.0%}")
    for when, busy, stolen_pct in (("before", busy_before_pct, stolen_before_pct),
                                   ("during", busy_during_pct, stolen_during_pct)):
        if busy is not None and busy > threshold_pct:
            stolen = stolen_words(stolen_pct)
            reasons.append(f"device busy with other work {when} timing: {busy:.0f}% > "
                           f"benchmark.busy_threshold {threshold_pct:.0f}%"
                           f"{f' ({stolen})' if stolen else ''}")
    return Verdict(reasons)
