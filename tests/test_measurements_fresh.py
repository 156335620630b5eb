"""A measurement is not an artifact: a plain rerun measures anew, reuse is asked for and named
wherever the figure shows, and every benchmark carries a VALID/INVALID verdict."""

from __future__ import annotations

import pytest

from tests.conftest import Workspace

pytestmark = pytest.mark.slow
SMOKE = ("debug=smoke", "model=resnet18", "stage=performance")


def test_a_rerun_measures_anew_and_a_reuse_names_the_run_that_measured(
        workspace: Workspace) -> None:
    workspace.run(*SMOKE)
    workspace.run(*SMOKE)
    reused = workspace.run(*SMOKE, "cache.reuse_measurements=true")
    first, second, third = workspace.runs()
    states = workspace.cache_states(second)
    assert states["export"] == "hit"  # artifacts stay cached ...
    assert states["benchmark"] == "miss"  # ... figures are measured again
    assert "benchmark.reused_from" not in second.data.tags
    assert second.data.tags["benchmark.measured_in_run"] == second.info.run_id
    assert second.data.metrics["throughput_fps"] != first.data.metrics["throughput_fps"]
    # asked for: the very figure of the second run, named as its
    assert workspace.cache_states(third)["benchmark"] == "hit"
    assert workspace.record(third)["stages"]["benchmark"]["reused"] is True
    assert third.data.tags["benchmark.reused_from"] == second.info.run_id
    assert third.data.tags["benchmark.measured_at"] == second.data.tags["benchmark.measured_at"]
    assert third.data.metrics["throughput_fps"] == second.data.metrics["throughput_fps"]
    (line,) = [x for x in reused.stdout.splitlines() if x.strip().startswith("benchmark ")]
    assert "reused: measured" in line and second.info.run_id in line
    assert "[reused]" in reused.stdout


def test_a_capped_benchmark_is_invalid_and_require_valid_fails_the_run(
        workspace: Workspace) -> None:
    capped = ("benchmark.max_duration_s=0.001", "benchmark.min_iters=1000")
    reported = workspace.run(*SMOKE, *capped)
    (line,) = [x for x in reported.stdout.splitlines() if "Result is :" in x]
    assert "INVALID" in line and "capped: benchmark.max_duration_s=0.001" in line
    failed = workspace.run(*SMOKE, *capped, "benchmark.require_valid=true", check=False)
    assert failed.returncode == 1
    (error,) = [x for x in failed.stderr.splitlines() if x.startswith("runner: error:")]
    assert "benchmark INVALID (" in error and "capped" in error and "require_valid" in error
    first, second = workspace.runs()
    assert first.info.status == "FINISHED" and second.info.status == "FAILED"
    for run in (first, second):  # the figures are recorded either way, with their verdict
        assert run.data.metrics["benchmark_valid"] == 0.0
        assert run.data.tags["benchmark.verdict"] == "INVALID"
        assert "capped" in run.data.tags["benchmark.verdict_reasons"]
