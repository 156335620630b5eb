"""`python -m runner compare`: verdicts beyond the runs' own noise, sweeps matched child by child,
exit status 0/1/2, `--save` files as a side, the comparison's own MLflow run; peak memory on
every run; compare.baseline gating a sweep.

Runs are either real pipeline runs (slow) or built in a real MLflow SQLite store with the figures
the runner's own measurement code makes from a clock that advances a set time per call, logged
through the runner's own logging functions: a candidate exactly 2x slower, beyond any noise."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from runner import compare, report, tracking
from runner.config import BenchmarkConfig, MlflowConfig
from runner.measurement import judge, measure
from tests.conftest import Workspace, compose_config
from tests.warm_cli import run_cli

DATASET = "synthetic (8 images)"


def benchmark_metrics(ms_per_call: float, bs: int) -> tuple[dict[str, float], str]:
    """The benchmark stage's metrics and verdict for calls of `ms_per_call` (+-1%, a fixed
    pattern), measured by runner.measurement on a clock that the calls advance."""
    settings = BenchmarkConfig(warmup_iters=1, warmup_min_s=0, min_iters=30, min_duration_s=0,
                               repeats=3)
    now, calls = [0], [0]

    def call() -> None:
        calls[0] += 1
        now[0] += int(ms_per_call * 1e6 * (1 + 0.01 * (calls[0] % 3 - 1)))

    measured = measure(call, settings, bs, clock=lambda: now[0])
    metrics = measured.metrics()
    repeats = [run.throughput_fps for run in measured.runs]  # as stages/benchmark.py logs them
    metrics["throughput_fps_min"], metrics["throughput_fps_max"] = min(repeats), max(repeats)
    verdict = judge({0: measured}, settings, None, None)
    metrics["benchmark_valid"] = float(verdict.valid)
    return metrics, verdict.word


def logged_run(space: Workspace, *, bs: int = 4, ms: float = 10.0, top1: float = 50.0,
               dataset: str = DATASET, parent: str | None = None, peak_mib: float = 700.0,
               overrides: tuple[str, ...] = ()) -> str:
    """A FINISHED run as the runner logs one: params from the composed config, tags, metrics."""
    tree = OmegaConf.to_container(compose_config("debug=smoke", f"bs={bs}", *overrides),
                                  resolve=True)
    assert isinstance(tree, dict)
    metrics, verdict = benchmark_metrics(ms, bs)
    metrics.update({"e2e_fps": 0.9 * metrics["throughput_fps"], "peak_rss_mib": peak_mib,
                    **{f"top{k}": min(100.0, top1 + 5 * (k - 1)) for k in range(1, 6)}})
    settings = MlflowConfig(space.tracking_uri, str(space.root / "mlruns"), "runner")
    experiment = tracking.experiment_id(settings)
    tags = {"model": "alexnet", "chip": "cpu", "dataset": dataset, report.VERDICT_TAG: verdict}
    if parent is not None:
        tags["sweep.job_num"] = str(bs)
    with mlflow.start_run(experiment_id=experiment, parent_run_id=parent, tags=tags) as run:
        mlflow.log_params(tracking.run_params(tree, list(overrides)))
        mlflow.log_metrics(tracking.readable(metrics))
    return run.info.run_id


def sweep_parent(space: Workspace, sizes: tuple[int, ...], ms: float = 10.0) -> str:
    client = MlflowClient(tracking_uri=space.tracking_uri)
    experiment = tracking.experiment_id(MlflowConfig(space.tracking_uri,
                                                     str(space.root / "mlruns"), "runner"))
    parent = client.create_run(experiment, tags={"sweep.role": "parent"}).info.run_id
    for bs in sizes:
        logged_run(space, bs=bs, ms=ms * bs, parent=parent)
    client.set_terminated(parent, "FINISHED")
    return parent


def run_compare(space: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["compare", *args, "--tracking-uri", space.tracking_uri], timeout=300)


def rows(stdout: str) -> dict[tuple[str, str], str]:
    """(pair, figure) -> verdict, from the printed table."""
    found = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 7 and cells[0] not in ("pair",) \
                and not line.startswith("|-"):
            found[(cells[0], cells[1])] = cells[6]
    return found


def test_a_candidate_twice_as_slow_regresses_and_fail_on_picks_the_figures(
        tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    baseline = logged_run(space, ms=10.0)
    slower = logged_run(space, ms=20.0)
    assert benchmark_metrics(10.0, 4)[1] == "VALID"  # else the rows would be INVALID

    done = run_compare(space, baseline, slower, "--no-track")
    assert done.returncode == 1, done.stderr
    verdicts = rows(done.stdout)
    pair = "alexnet/cpu/bs4"
    for figure in ("throughput_fps", "latency_ms_p50", "latency_ms_p99", "e2e_fps"):
        assert verdicts[(pair, figure)] == "REGRESSED"
    for figure in ("top1", "top5", "peak_rss_mib"):
        assert verdicts[(pair, figure)] == "SAME"
    assert "REGRESSED: alexnet/cpu/bs4 e2e_fps" in done.stdout.splitlines()[-1]

    # the other way round the same difference is an improvement: exit 0
    better = run_compare(space, slower, baseline, "--no-track")
    assert better.returncode == 0, better.stderr
    assert rows(better.stdout)[(pair, "throughput_fps")] == "IMPROVED"
    # only the figures of --fail-on fail the gate
    gated = run_compare(space, baseline, slower, "--no-track", "--fail-on", "top1,peak_rss_mib")
    assert gated.returncode == 0, gated.stderr


def test_the_rule_holds_a_change_to_the_runs_noise_and_accuracy_to_the_guides_points() -> None:
    rule = compare.Rule(k=2, min_effect=0.05)
    throughput = compare.FIGURES[0]
    # 8% noise each: sqrt(2) * 8% * 2 = 22.6%; a 20% drop is within it, a 30% drop beyond
    assert compare.judge_timing(throughput, 100, 80, 0.08, 0.08, rule)[0] == compare.SAME
    assert compare.judge_timing(throughput, 100, 70, 0.08, 0.08, rule)[0] == compare.REGRESSED
    # a latency percentile is held to its own spread over the repeats where the run logged it
    def timed(p99: float, p99_cv: float) -> compare.Entry:
        return compare.Entry("r", "alexnet", "cpu", DATASET, {"bs": "4"},
                             {"latency_ms_p99": p99, "throughput_cv": 0.01,
                              "latency_ms_p99_cv": p99_cv}, benchmark_verdict="VALID")

    (p99,) = [r for r in compare.judge(timed(10.0, 0.08), timed(13.0, 0.08), "p", rule)
              if r.figure == "latency_ms_p99"]
    assert p99.verdict == compare.REGRESSED  # 30% beyond 2 * sqrt(2) * 8% = 22.6%
    (p99,) = [r for r in compare.judge(timed(10.0, 0.08), timed(12.0, 0.08), "p", rule)
              if r.figure == "latency_ms_p99"]
    assert p99.verdict == compare.SAME  # 20% within it; with throughput_cv alone: REGRESSED
    assert compare.judge_timing(compare.FIGURES[2], 10.0, 12.0, 0.01, 0.01, rule)[0] == \
        compare.REGRESSED
    # no noise logged: the minimum effect decides
    assert compare.judge_timing(throughput, 100, 96, None, None, rule)[0] == compare.SAME
    assert compare.judge_timing(throughput, 100, 94, None, None, rule)[0] == compare.REGRESSED

    def entry(top1: float, verdict: str = "VALID") -> compare.Entry:
        return compare.Entry("r", "alexnet", "cpu", DATASET, {"bs": "4"},
                             {"top1": top1, "throughput_fps": 100.0, "throughput_cv": 0.01},
                             benchmark_verdict=verdict, max_drop=1.0)

    def verdict(b: compare.Entry, c: compare.Entry, figure: str) -> str:
        (row,) = [r for r in compare.judge(b, c, "p", rule) if r.figure == figure]
        return row.verdict

    assert verdict(entry(50.0), entry(50.0), "top1") == compare.SAME
    # the same images: exact, even within the guide's 1 pt (which the row names)
    assert verdict(entry(50.0), entry(49.5), "top1") == compare.REGRESSED
    assert verdict(entry(50.0), entry(48.5), "top1") == compare.REGRESSED
    assert verdict(entry(50.0), entry(51.5), "top1") == compare.IMPROVED
    assert verdict(entry(50.0), entry(50.0, "INVALID"), "throughput_fps") == compare.INVALID
    # an INVALID figure passes a gate unless strict, and only when it is a figure of fail_on
    busy = compare.compare(compare.Side("b", "run", [entry(50.0)]),
                           compare.Side("c", "run", [entry(50.0, "INVALID")]), rule)
    assert busy.failing() == []
    assert [r.figure for r in busy.failing(strict=True)] == ["throughput_fps"]
    assert busy.failing(["top1"], strict=True) == []


def test_sweeps_are_matched_child_by_child_and_an_extra_bs_is_unmatched(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    baseline = sweep_parent(space, (1, 2))
    candidate = sweep_parent(space, (1, 2, 4))
    client = MlflowClient(tracking_uri=space.tracking_uri)
    sides = [compare.load_side(s, w, client) for s, w in ((baseline, "baseline"),
                                                           (candidate, "candidate"))]
    assert [len(s.entries) for s in sides] == [2, 3] and sides[0].kind == "sweep"
    result = compare.compare(*sides)
    by_pair: dict[str, set[str]] = {}
    for row in result.rows:
        by_pair.setdefault(row.pair, set()).add(row.verdict)
    assert by_pair == {"alexnet/cpu/bs1": {"SAME"}, "alexnet/cpu/bs2": {"SAME"},
                       "alexnet/cpu/bs4": {"UNMATCHED"}}
    # each matched row pairs the children of the same bs
    bs_of = {e.run_id: e.params["bs"] for side in sides for e in side.entries}
    assert all(bs_of[r.baseline_run] == bs_of[r.candidate_run] for r in result.rows
               if r.verdict != "UNMATCHED")
    assert result.regressed() == [] and result.failing() == []
    # --strict: a run on one side only does not pass unjudged
    (unmatched,) = result.failing(strict=True)
    assert (unmatched.pair, unmatched.verdict) == ("alexnet/cpu/bs4", "UNMATCHED")
    assert run_compare(space, baseline, candidate, "--no-track").returncode == 0
    strict = run_compare(space, baseline, candidate, "--no-track", "--strict")
    assert strict.returncode == 1, strict.stderr
    assert strict.stdout.splitlines()[-1].endswith("UNMATCHED: alexnet/cpu/bs4 *; exit 1")
    # compare.strict gates a sweep the same way
    gate = compare.Gate(sides[0], list(compare.FIGURE_NAMES), space.tracking_uri)
    assert gate.failure(result) == ""
    gate.strict = True
    assert gate.failure(result).endswith("unjudged (compare.strict): UNMATCHED: alexnet/cpu/bs4 *")


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    space = Workspace(tmp_path)
    known = logged_run(space)
    other = logged_run(space, dataset="imagenet[:32]")
    unknown = run_compare(space, known, "0" * 32, "--no-track")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        f"runner: error: compare: candidate {'0' * 32} is not a run id in {space.tracking_uri}"
        " (nor a results file): pass a run id from that store, or --tracking-uri for another "
        "store"]
    datasets = run_compare(space, known, other, "--no-track")
    assert datasets.returncode == 2
    (line,) = datasets.stderr.strip().splitlines()
    assert f"candidate run {other} on 'imagenet[:32]'" in line and DATASET in line
    figure = run_compare(space, known, known, "--fail-on", "top9")
    assert figure.returncode == 2 and "top9" in figure.stderr and len(
        figure.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_runs_of_one_config_are_the_same_saved_and_compared_as_a_run(
        workspace: Workspace, tmp_path: Path) -> None:
    for _ in range(2):
        workspace.run("debug=smoke")
    first, second = workspace.runs()
    for run in (first, second):  # peak memory, whole run and per stage, and how it was taken
        metrics = run.data.metrics
        assert metrics["peak_rss_mib"] > 50  # the interpreter, torch and onnxruntime at least
        stages = run.data.tags["stages"].split(",")
        assert metrics["peak_rss_mib"] == max(metrics[f"peak_rss_mib_{s}"] for s in stages)
        assert "sampled every" in run.data.tags[tracking.MEMORY_TAG]

    saved = tmp_path / "results.json"
    done = run_compare(workspace, first.info.run_id, second.info.run_id, "--save", str(saved))
    assert done.returncode == 0, done.stdout + done.stderr
    verdicts = rows(done.stdout)
    invalid = "INVALID" in (first.data.tags[report.VERDICT_TAG],
                            second.data.tags[report.VERDICT_TAG])
    for (_, figure), verdict in verdicts.items():
        if figure.startswith("top"):  # the same images, weights and model: equal
            assert verdict == "SAME"
        elif figure in ("throughput_fps", "latency_ms_p50", "latency_ms_p99", "e2e_fps"):
            assert verdict == ("INVALID" if invalid else "SAME")
    assert {f for _, f in verdicts} == set(compare.FIGURE_NAMES)

    # the comparison's own run: both sides as tags, the table as Description, CSV and plot
    client = workspace.client()
    (run,) = client.search_runs([client.get_experiment_by_name("compare").experiment_id])
    tags = run.data.tags
    assert (tags["compare.baseline"], tags["compare.candidate"]) == (first.info.run_id,
                                                                     second.info.run_id)
    assert tags["mlflow.note.content"].startswith("## compare: ") and "rule:" in tags[
        "mlflow.note.content"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "compare")} == {
        "compare/table.csv", "compare/ratios.png", "compare/results.json"}

    # the saved file stands for the candidate: against the same run, every figure is equal
    assert json.loads(saved.read_text())["format"] == compare.FORMAT
    again = run_compare(workspace, str(saved), second.info.run_id, "--no-track")
    assert again.returncode == 0, again.stderr
    assert all(v in ("SAME", "INVALID") for v in rows(again.stdout).values())
    assert "file " + str(saved) + "#candidate" in again.stdout


@pytest.mark.slow
def test_a_sweep_against_a_better_baseline_reports_the_verdict_and_exits_1(
        workspace: Workspace) -> None:
    # accuracy and memory do not depend on the machine's load: a baseline 50 points more
    # accurate in 1 MiB regresses whatever the benchmark's verdict
    baseline = logged_run(workspace, top1=50.0, peak_mib=1.0)
    result = workspace.run("-m", "debug=smoke", f"compare.baseline={baseline}", check=False)
    assert result.returncode == 1, result.stderr
    assert f"compare.baseline={baseline}: REGRESSED beyond noise" in result.stderr
    (parent,) = [r for r in workspace.runs() if r.data.tags.get("sweep.role") == "parent"]
    text = parent.data.tags["mlflow.note.content"]
    header = next(line for line in text.splitlines() if line.startswith("| model / chip"))
    assert header.rstrip(" |").endswith("vs baseline")
    row = next(line for line in text.splitlines() if line.startswith("| alexnet / cpu"))
    assert row.rstrip(" |").endswith("REGRESSED")
    assert parent.data.tags["compare.verdict"] == "REGRESSED"
    assert "| alexnet/cpu/bs4 | top1" in text  # the comparison's rows under the table

    missing = workspace.run("-m", "debug=smoke", "compare.baseline=" + "f" * 32, check=False)
    assert missing.returncode == 2
    assert len(workspace.runs()) == 3  # refused before any run: baseline, sweep parent, child


def test_a_runs_noise_is_one_repeats_spread_or_the_standard_error_of_its_figure() -> None:
    def run(fps: float, repeats: int | None = None, cv: float | None = 0.08,
            windows: float = 0.04) -> compare.Entry:
        metrics = {"throughput_fps": fps, "benchmark_window_spread": windows}
        metrics |= {"throughput_cv": cv} if cv is not None else {}
        metrics |= {"benchmark_repeats": float(repeats)} if repeats is not None else {}
        return compare.Entry("r", "alexnet", "cpu", DATASET, {"bs": "4"}, metrics,
                             benchmark_verdict="VALID")

    standard_error = compare.Rule(noise="standard-error")
    assert compare.Rule().noise == "repeat-spread"  # the default (docs/results.md says why)
    assert run(100, 4).noise("throughput_fps") == pytest.approx(0.08)  # one repeat's spread
    assert run(100, 4, cv=0.01).noise("throughput_fps") == pytest.approx(0.02)  # the windows'
    assert run(100, 4).noise("throughput_fps", "standard-error") == pytest.approx(0.04)  # 8%/2
    # one repeat: no spread over repeats, the windows' is all it has
    assert run(100, 1, cv=None).noise("throughput_fps", "standard-error") == pytest.approx(0.02)

    def verdict(rule: compare.Rule, b: compare.Entry, c: compare.Entry) -> str:
        (row,) = [r for r in compare.judge(b, c, "p", rule) if r.figure == "throughput_fps"]
        return row.verdict

    # 4 repeats of 8% spread: band 2 * sqrt(2) * 4% = 11.3%, so a 15% drop is caught; one
    # repeat's spread gives 22.6% and lets it through
    assert verdict(standard_error, run(100, 4), run(85, 4)) == compare.REGRESSED
    assert verdict(compare.Rule(), run(100, 4), run(85, 4)) == compare.SAME
    # and the band never narrows below min_effect, what varies between processes
    assert verdict(standard_error, run(100, 100), run(96, 100)) == compare.SAME
    assert "standard error" in standard_error.text()
    assert "relative noise" in compare.Rule().text()
