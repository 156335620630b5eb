"""The benchmark method itself, on a fake clock: every call's duration is scripted, so warm-up,
stopping rule, stability verdict, repeats and the reported figures are checked exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pytest

from runner.config import BenchmarkConfig
from runner.errors import ConfigError
from runner.measurement import (
    Measurement,
    TimedRun,
    coefficient_of_variation,
    judge,
    measure,
    window_throughputs,
)

MS = 1_000_000  # nanoseconds


class FakeDevice:
    """A clock and a `run_once` that advances it by the next scripted duration (in ms)."""

    def __init__(self, durations_ms: Callable[[int], float], clock_read_ms: float = 0.0) -> None:
        self.now = 0
        self.calls = 0
        self._durations = durations_ms
        self._clock_read = round(clock_read_ms * MS)

    def clock(self) -> int:
        now = self.now
        self.now += self._clock_read  # what reading the timer costs, between timed calls
        return now

    def run_once(self) -> None:
        self.now += round(self._durations(self.calls) * MS)
        self.calls += 1


def settings(**overrides: float) -> BenchmarkConfig:
    base = dict(warmup_iters=0, warmup_min_s=0.0, min_iters=10, min_duration_s=0.0,
                max_duration_s=1e6, windows=5, stable_windows=3, max_spread=0.10,
                max_trials=3, repeats=1)
    return BenchmarkConfig(**{**base, **overrides})


def constant(ms: float) -> Callable[[int], float]:
    return lambda call: ms


def scripted(first: Iterable[float], then: float) -> Callable[[int], float]:
    head = list(first)
    return lambda call: head[call] if call < len(head) else then


def test_warmup_calls_are_excluded_from_the_figures() -> None:
    device = FakeDevice(scripted([500, 300, 200], then=10))
    result = measure(device.run_once, settings(warmup_iters=3), 4, device.clock)
    assert result.warmup_iters == 3
    assert result.warmup_s == pytest.approx(1.0)
    assert result.compute_ms == [10.0] * 10
    assert result.throughput_fps == pytest.approx(400.0)  # 1000 * 4 / 10 ms


def test_warmup_lasts_at_least_its_minimum_time() -> None:
    device = FakeDevice(constant(10))
    result = measure(device.run_once, settings(warmup_iters=2, warmup_min_s=0.1), 1,
                     device.clock)
    assert result.warmup_iters == 10  # 2 calls are not 0.1 s yet; 10 calls of 10 ms are
    assert result.iterations == 10
    assert device.calls == 20


@pytest.mark.parametrize(("min_iters", "min_duration_s", "expected"), [
    (50, 1.0, 100),  # 50 calls take 0.5 s: the duration decides
    (200, 1.0, 200),  # 1 s is reached after 100 calls: the count decides
    (1, 0.0, 1),
])
def test_timing_stops_when_both_minimums_are_met(min_iters: int, min_duration_s: float,
                                                 expected: int) -> None:
    device = FakeDevice(constant(10))
    result = measure(device.run_once,
                     settings(min_iters=min_iters, min_duration_s=min_duration_s), 1,
                     device.clock)
    assert result.iterations == expected
    assert result.wall_s == pytest.approx(expected * 0.010)
    assert not result.capped


def test_the_duration_cap_ends_a_run_early_and_says_so() -> None:
    device = FakeDevice(constant(10))
    result = measure(device.run_once, settings(min_iters=1000, max_duration_s=0.5), 1,
                     device.clock)
    assert result.iterations == 50
    assert result.capped
    assert result.metrics()["benchmark_capped"] == 1.0


def test_wall_fps_counts_the_gaps_between_calls() -> None:
    # each clock read costs 5 ms: a call spans read + 10 ms + read = 15 ms of compute, and
    # consecutive calls start 20 ms apart
    device = FakeDevice(constant(10), clock_read_ms=5)
    result = measure(device.run_once, settings(min_iters=10), 8, device.clock)
    assert result.compute_ms == [15.0] * 10
    assert result.wall_s == pytest.approx(0.200)
    assert result.throughput_fps == pytest.approx(1000 * 8 / 15)
    assert result.wall_fps == pytest.approx(8 * 10 / 0.200)


def test_a_stable_run_is_accepted_at_the_first_trial() -> None:
    device = FakeDevice(constant(10))
    result = measure(device.run_once, settings(), 1, device.clock)
    assert result.stable and result.trials == 1
    assert result.runs[0].window_fps == pytest.approx([100.0] * 5)
    assert result.spread == 0.0


def test_an_unstable_trial_is_retried_and_discarded() -> None:
    # trial 1: calls 0-9, the last window of two calls is twice as slow -> spread 0.75 > 0.10
    # trial 2: calls 10-19 all 10 ms -> stable
    device = FakeDevice(lambda call: 20.0 if call in (8, 9) else 10.0)
    result = measure(device.run_once, settings(), 1, device.clock)
    assert result.trials == 2
    assert result.stable
    assert result.compute_ms == [10.0] * 10  # only the accepted trial's calls


def test_a_run_unstable_in_every_trial_is_reported_unstable() -> None:
    device = FakeDevice(lambda call: 20.0 if call % 10 >= 8 else 10.0)
    result = measure(device.run_once, settings(max_trials=3), 1, device.clock)
    assert result.trials == 3
    assert not result.stable
    assert result.metrics()["benchmark_stable"] == 0.0
    assert result.spread == pytest.approx((100 - 50) / np.mean([100, 100, 50]))


def test_only_the_last_windows_decide_stability() -> None:
    # the first two windows are slow (a ramp-up), the last three agree
    device = FakeDevice(lambda call: 30.0 if call % 10 < 4 else 10.0)
    result = measure(device.run_once, settings(stable_windows=3), 1, device.clock)
    assert result.stable and result.trials == 1
    device = FakeDevice(lambda call: 30.0 if call % 10 < 4 else 10.0)
    strict = measure(device.run_once, settings(stable_windows=5), 1, device.clock)
    assert not strict.stable and strict.trials == 3


def test_window_throughputs_split_the_calls_in_equal_counts() -> None:
    assert window_throughputs([10, 10, 20, 20, 40], 5, 2) == pytest.approx(
        [200, 200, 100, 100, 50])
    # 7 calls in 3 windows: 3, 2, 2 calls
    assert window_throughputs([10, 10, 10, 20, 20, 5, 5], 3, 1) == pytest.approx(
        [100, 50, 200])
    assert window_throughputs([10, 10], 5, 1) == pytest.approx([100, 100])


def test_percentiles_interpolate_linearly_between_calls() -> None:
    durations = [7.0, 1.0, 10.0, 4.0, 2.0, 9.0, 3.0, 6.0, 5.0, 8.0]  # 1..10, shuffled
    device = FakeDevice(lambda call: durations[call % 10])
    result = measure(device.run_once, settings(max_spread=10.0), 1, device.clock)
    metrics = result.metrics()
    # rank (n - 1) * p / 100 over the sorted values 1..10
    assert metrics["latency_ms_p50"] == pytest.approx(5.5)
    assert metrics["latency_ms_p90"] == pytest.approx(9.1)
    assert metrics["latency_ms_p99"] == pytest.approx(9.91)
    assert metrics["latency_ms_mean"] == pytest.approx(5.5)
    assert (metrics["latency_ms_min"], metrics["latency_ms_max"]) == (1.0, 10.0)


def test_repeats_give_the_run_to_run_coefficient_of_variation() -> None:
    # three repeats of 10 calls each, at 10, 11 and 12 ms per call
    device = FakeDevice(lambda call: 10.0 + call // 10)
    result = measure(device.run_once, settings(repeats=3), 1, device.clock)
    per_run = [run.throughput_fps for run in result.runs]
    assert per_run == pytest.approx([100.0, 1000 / 11, 1000 / 12])
    expected_cv = np.std(per_run, ddof=1) / np.mean(per_run)
    metrics = result.metrics()
    assert metrics["throughput_cv"] == pytest.approx(expected_cv)
    assert metrics["throughput_cv"] == pytest.approx(0.0909, abs=1e-3)
    assert metrics["benchmark_repeats"] == 3
    assert metrics["benchmark_iterations"] == 30
    # ais_bench's figure over every timed call: 1000 * bs / mean(10, 11, 12 ms)
    assert metrics["throughput_fps"] == pytest.approx(1000 / 11)
    assert result.wall_s == pytest.approx(0.33)


def test_a_tail_has_its_own_run_to_run_spread() -> None:
    # three repeats of 10 calls at 10 ms, but for one slow call in the second repeat: the
    # throughput hardly moves, its p99 does
    device = FakeDevice(lambda call: 40.0 if call == 15 else 10.0)
    result = measure(device.run_once, settings(repeats=3, max_spread=10.0), 1, device.clock)
    metrics = result.metrics()
    p99 = [float(np.percentile(run.compute_ms, 99)) for run in result.runs]
    assert p99[0] == p99[2] == 10.0 and p99[1] > 30
    assert metrics["latency_ms_p99_cv"] == pytest.approx(np.std(p99, ddof=1) / np.mean(p99))
    assert metrics["latency_ms_p99_cv"] > 4 * metrics["throughput_cv"]
    assert metrics["latency_ms_p50_cv"] == 0.0


def test_a_single_repeat_has_no_cv() -> None:
    device = FakeDevice(constant(10))
    metrics = measure(device.run_once, settings(repeats=1), 1, device.clock).metrics()
    assert "throughput_cv" not in metrics and "latency_ms_p99_cv" not in metrics
    assert coefficient_of_variation([5.0]) is None
    assert coefficient_of_variation([5.0, 5.0]) == 0.0


def test_warmup_happens_once_before_all_repeats() -> None:
    device = FakeDevice(scripted([100, 100], then=10))
    result = measure(device.run_once, settings(warmup_iters=2, repeats=2), 1, device.clock)
    assert result.warmup_iters == 2
    assert all(run.compute_ms == [10.0] * 10 for run in result.runs)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("repeats", 0, "benchmark.repeats=0 must be > 0"),
    ("busy_threshold", 1.5, "benchmark.busy_threshold=1.5 must be a fraction in 0..1"),
    ("min_duration_s", -1.0, "benchmark.min_duration_s=-1.0 must be >= 0"),
])
def test_bad_settings_are_rejected_naming_the_key(key: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        settings(**{key: value})


def _measurement(stable: bool = True, capped: bool = False,
                 fps: tuple[float, ...] = (100.0, 100.0, 100.0)) -> Measurement:
    runs = [TimedRun(batch_size=1, compute_ms=[1000.0 / f] * 10, wall_s=10 / f, trials=1,
                     stable=stable, spread=0.02 if stable else 0.3, capped=capped) for f in fps]
    return Measurement(batch_size=1, warmup_iters=1, warmup_s=0.1, runs=runs)


def test_the_verdict_is_valid_only_when_every_rule_holds() -> None:
    rules = BenchmarkConfig(max_cv=0.05, busy_threshold=0.25)
    assert judge({0: _measurement()}, rules, 3.0, 10.0).line() == "VALID"
    failed = judge({0: _measurement(stable=False, capped=True, fps=(100.0, 80.0, 120.0))},
                   rules, 40.0, 30.0)
    assert not failed.valid and failed.word == "INVALID"
    assert [reason.split(":")[0] for reason in failed.reasons] == [
        "unstable", "capped", "spread across repeats", "device busy with other work before "
        "timing", "device busy with other work during timing"]
    # one device of two breaking a rule is named
    two = judge({0: _measurement(), 1: _measurement(capped=True)}, rules, None, None)
    assert two.reasons == ["device 1: capped: benchmark.max_duration_s=60 ended timing before "
                           "min_iters and min_duration_s were reached"]
    # one repeat: no spread to judge; no reading: no busy rule broken
    assert judge({0: _measurement(fps=(100.0,))}, rules, None, None).valid


def test_time_the_hypervisor_stole_counts_as_busy_and_is_named() -> None:
    rules = BenchmarkConfig(busy_threshold=0.25)
    stolen = judge({0: _measurement()}, rules, 5.0, 40.0, stolen_before_pct=0.0,
                   stolen_during_pct=32.0)
    assert stolen.reasons == ["device busy with other work during timing: 40% > "
                              "benchmark.busy_threshold 25% (32% stolen by the hypervisor)"]
    # below the threshold, steal is no reason
    assert judge({0: _measurement()}, rules, 5.0, 20.0, 0.0, 15.0).valid
