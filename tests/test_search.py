"""The constrained search (`-m experiment=search_cpu`, runner/search.py): each trial judged
against the latency budget and the guide's accuracy rule, the objective returned to optuna, the
parent run naming the best feasible setting and why the others lost; the search's config errors
as one line before any trial. Judging and the report from values (fast); real searches through
the CLI, on generated images with random weights (slow)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from runner import report, search
from runner.config import SearchConfig
from runner.errors import ConfigError
from tests.conftest import FAST_BENCHMARK, Workspace, run_config

PUBLISHED = report.Published("the guide", "pth", {"pth": (56.5, 79.0)}, "cpu", {}, 1.0)


def _accuracy(top1: float, top5: float, not_comparable: str = "") -> report.Comparison:
    return report.compare(PUBLISHED, 16, {"top1": top1, "top5": top5}, not_comparable)


def test_a_trial_is_feasible_within_the_budget_and_the_rule() -> None:
    settings = SearchConfig(max_p99_ms=50)
    metrics = {"throughput_fps": 800.0, "latency_ms_p99": 40.0, "top1": 56.0, "top5": 78.5}
    judged = search.judge(settings, metrics, _accuracy(56.0, 78.5))
    assert judged.feasible and judged.returned() == 800.0 and not judged.reasons
    assert judged.tags()[search.FEASIBLE_TAG] == "yes"


def test_over_the_budget_or_failing_the_rule_is_infeasible_and_ranked_last() -> None:
    settings = SearchConfig(max_p99_ms=50)
    slow = search.judge(settings, {"throughput_fps": 900.0, "latency_ms_p99": 61.25},
                        _accuracy(56.0, 78.5))
    assert not slow.feasible and slow.reasons == ("p99 61.2 ms > budget 50 ms",)
    assert slow.returned() == -math.inf and slow.value == 900.0
    # top-1 2 points below the published 56.5: beyond the 1-point rule
    wrong = search.judge(settings, {"throughput_fps": 900.0, "latency_ms_p99": 10.0},
                         _accuracy(54.5, 78.5))
    assert not wrong.feasible and wrong.reasons[0].startswith("accuracy FAIL: top-1 -2.00 pt")
    assert wrong.tags()[search.REASONS_TAG] == wrong.reasons[0]


def test_accuracy_not_applicable_is_a_note_unless_a_pass_is_required() -> None:
    metrics = {"throughput_fps": 500.0, "latency_ms_p99": 10.0}
    unjudged = _accuracy(0.0, 0.0, "random weights")
    assert unjudged.accuracy == report.NOT_APPLICABLE
    lenient = search.judge(SearchConfig(max_p99_ms=50), metrics, unjudged)
    assert lenient.feasible and lenient.notes == ("accuracy not judged: N/A, random weights",)
    strict = search.judge(SearchConfig(max_p99_ms=50, require_accuracy_pass=True), metrics,
                          unjudged)
    assert not strict.feasible and "search.require_accuracy_pass=true" in strict.reasons[0]


def _job(number: int, bs: int, fps: float, p99: float, feasible: bool, why: str = "",
         status: str = "FINISHED") -> report.Job:
    tags = {search.OBJECTIVE_TAG: "throughput_fps", search.BUDGET_TAG: "50",
            search.FEASIBLE_TAG: "yes" if feasible else "no",
            **({search.REASONS_TAG: why} if why else {})}
    return report.Job(job=number, model="alexnet", chip="cpu", bs=str(bs), dataset="synthetic",
                      metrics={"throughput_fps": fps, "latency_ms_p99": p99}, tags=tags,
                      status=status, run_id=f"run{number}", precision="fp32",
                      error="ParityError: too far" if status == "FAILED" else "")


def test_the_report_names_the_best_feasible_and_why_each_other_lost() -> None:
    jobs = [_job(0, 4, 400.0, 20.0, True), _job(1, 16, 800.0, 45.0, True),
            _job(2, 64, 950.0, 120.0, False, "p99 120.0 ms > budget 50 ms"),
            _job(3, 16, 780.0, 47.0, True), _job(4, 8, 0.0, 0.0, False, status="FAILED")]
    settings = {j.run_id: f"bs={j.bs}" for j in jobs}
    result = search.outcome(jobs, settings, "optuna TPESampler, seed 0, n_trials 5")
    assert result.best is not None and result.best.job.run_id == "run1"
    assert (result.trials, result.feasible) == (5, 3)
    lines = result.text.splitlines()
    assert max(map(len, lines)) <= report.WIDTH
    assert lines[0] == ("## Constrained search: maximize throughput_fps subject to "
                        "latency_ms_p99 <= 50 ms and the guide's accuracy rule")
    assert "- best feasible setting: bs=16 (job 1, run run1): throughput_fps 800.0" in result.text
    assert "5 trials, 4 distinct settings: 3 feasible, 1 infeasible, 1 failed" in result.text
    assert "measured more than once (throughput_fps): bs=16 780.0-800.0 over 2 trials" in (
        " ".join(result.text.split()))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines
            if line.startswith("| ") and not line.startswith("| job")]
    assert [(r[0], r[1], r[-1]) for r in rows] == [
        ("1", "bs=16", "best feasible"),
        ("3", "bs=16 (as job 1)", "feasible, 2.5% slower"),
        ("0", "bs=4", "feasible, 50.0% slower"),
        ("2", "bs=64", "infeasible: p99 120.0 ms > budget 50 ms"),
        ("4", "bs=8", "failed (FAILED): ParityError: too far")]
    unbudgeted = _job(5, 1, 100.0, 5.0, True)
    unbudgeted.tags[search.BUDGET_TAG] = "none"
    assert search.outcome([unbudgeted], settings).text.startswith(
        "## Constrained search: maximize throughput_fps subject to the guide's accuracy rule "
        "(no latency budget)\n")
    nothing = search.outcome([jobs[2]], settings)
    assert nothing.best is None and "- no feasible setting" in nothing.text


def test_search_config_errors_are_one_line_config_errors() -> None:
    for overrides, expected in (
            (("search.max_p99_ms=0",), "search.max_p99_ms=0.0 must be > 0"),
            (("search.max_p99_ms=-5",), "search.max_p99_ms=-5.0 must be > 0"),
            (("search.objective=top1",), "search.objective='top1' is not one of")):
        with pytest.raises(ConfigError) as error:
            run_config(*overrides)
        assert str(error.value).startswith(expected) and "\n" not in str(error.value)
    cfg = run_config("stage=accuracy", "search.max_p99_ms=50")
    with pytest.raises(ConfigError, match=r"search\.objective=throughput_fps is measured by "
                       r"the benchmark stage, which stage=accuracy leaves out"):
        search.check(cfg)


def test_the_preset_searches_bs_and_precision_with_a_seeded_maximizing_sampler() -> None:
    from hydra import compose, initialize_config_dir

    from runner.config import PROJECT_ROOT
    from tests.conftest import compose_config

    assert compose_config("experiment=search_cpu").search.max_p99_ms > 0
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=search_cpu"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == search.OPTUNA_SWEEPER
    assert str(sweeper.direction) == "maximize" and sweeper.sampler.seed == 0
    assert dict(sweeper.params) == {"bs": "choice(1,2,4,8,16,32,64)",
                                    "chip.precision": "choice(fp32,int8)"}
    search.check_sweeper(cfg)  # accepted as it is
    cfg.hydra.sweeper.direction = "minimize"
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.direction=minimize: .* set "
                       r"hydra\.sweeper\.direction=maximize"):
        search.check_sweeper(cfg)
    cfg.hydra.sweeper.direction = "maximize"
    cfg.stage.stages = ["export", "convert"]
    with pytest.raises(ConfigError, match=r"search\.objective=throughput_fps is measured by "
                       r"the benchmark stage"):
        search.check_sweeper(cfg)
    cfg.stage.stages = ["export", "convert", "benchmark"]
    cfg.hydra.sweeper.storage = "sqlite:///study.db"
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.storage=sqlite:///study\.db: optuna "
                       r"2\.10's database storage fails"):
        search.check_sweeper(cfg)


# -- real searches through the CLI --

SMALL_SEARCH = ("experiment=search_cpu", "stage=performance", "dataset=synthetic",
                "model.weights=random", "chip.precision=fp32", *FAST_BENCHMARK,
                "benchmark.repeats=1")


def _search(space: Workspace, *args: str) -> tuple[object, list, dict]:
    """One search through the CLI: its parent run, children (in job order), optuna's result."""
    result = space.run("-m", *SMALL_SEARCH, *args, timeout=300)
    runs = space.runs()
    parent = [r for r in runs if r.data.tags.get("sweep.role") == "parent"][-1]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId")
                       == parent.info.run_id), key=lambda r: int(r.data.tags["sweep.job_num"]))
    (results,) = Path(parent.data.tags["sweep.dir"]).glob("optimization_results.yaml")
    assert "## Constrained search" in result.stdout
    return parent, children, yaml.safe_load(results.read_text())


@pytest.mark.slow
def test_a_search_names_its_best_feasible_setting_and_replays_from_the_cache(
        workspace: Workspace) -> None:
    """3 trials over bs 1 and 2, then the search again for 2 trials with
    cache.reuse_measurements=true and a budget no run can meet: the seeded sampler proposes the
    same first settings, each trial reads its figure from the cache, and each is marked
    infeasible."""
    parent, children, optuna_result = _search(workspace, "bs=choice(1,2)",
                                              "hydra.sweeper.n_trials=3",
                                              "search.max_p99_ms=100000")
    assert parent.info.status == "FINISHED" and len(children) == 3
    for child in children:  # ordinary runs, with every figure, judged as trials
        assert child.info.status == "FINISHED"
        assert {"throughput_fps", "latency_ms_p99", "latency_ms_p50"} <= set(child.data.metrics)
        assert child.data.params["chip.precision"] == "fp32"
        assert child.data.tags["search.feasible"] == "yes"
        assert child.data.tags["search.max_p99_ms"] == "100000"
        assert "mlflow.note.content" in child.data.tags
    best = max(children, key=lambda r: r.data.metrics["throughput_fps"])
    assert parent.data.tags["search.best_run"] == best.info.run_id
    assert parent.data.tags["search.best"] == (f"bs={best.data.params['bs']} "
                                               "chip.precision=fp32")
    assert parent.data.metrics["search_trials"] == 3
    assert parent.data.metrics["search_best_throughput_fps"] == pytest.approx(
        best.data.metrics["throughput_fps"], rel=1e-6)
    # optuna was told each trial's throughput: its best is the parent's
    assert optuna_result["best_value"] == pytest.approx(best.data.metrics["throughput_fps"],
                                                        rel=1e-6)
    assert optuna_result["best_params"]["bs"] == int(best.data.params["bs"])
    note = parent.data.tags["mlflow.note.content"]
    assert "best feasible setting: bs=" in note and "optuna TPESampler, seed 0" in note

    again, replayed, replay_result = _search(workspace, "bs=choice(1,2)",
                                             "hydra.sweeper.n_trials=2",
                                             "search.max_p99_ms=0.001",
                                             "cache.reuse_measurements=true")
    assert again.info.run_id != parent.info.run_id and len(replayed) == 2
    assert [r.data.params["bs"] for r in replayed] == [r.data.params["bs"]
                                                       for r in children[:2]]
    measured = {r.info.run_id for r in children}
    for child in replayed:  # finished runs with their (reused) figures, only not feasible
        assert child.info.status == "FINISHED" and "throughput_fps" in child.data.metrics
        assert child.data.tags["benchmark.reused_from"] in measured
        assert child.data.tags["search.feasible"] == "no"
        assert child.data.tags["search.why"].endswith("ms > budget 0.001 ms")
    assert again.data.tags["search.best"] == "none feasible"
    assert "- no feasible setting" in again.data.tags["mlflow.note.content"]
    assert replay_result["best_value"] == -math.inf


@pytest.mark.slow
def test_failing_trials_rank_last_and_the_search_goes_on(workspace: Workspace) -> None:
    """Every trial refused (chip.threads=-1): each a FAILED child, -inf to optuna, the search
    ends with its report and exit status 1, as a sweep with failed jobs does."""
    result = workspace.run("-m", *SMALL_SEARCH, "bs=choice(1,2)", "hydra.sweeper.n_trials=2",
                           "chip.threads=-1", check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "runner: error: 2 of 2 sweep jobs did not finish" in result.stderr
    runs = workspace.runs()
    (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(c.info.status == "FAILED" for c in children)
    assert parent.data.tags["search.best"] == "none feasible"
    note = parent.data.tags["mlflow.note.content"]
    assert "0 feasible, 0 infeasible, 2 failed" in note
    assert "failed (FAILED): ConfigError: chip.threads=-1 must" in note
    (results,) = Path(parent.data.tags["sweep.dir"]).glob("optimization_results.yaml")
    assert yaml.safe_load(results.read_text())["best_value"] == -math.inf


@pytest.mark.slow
def test_a_search_with_a_bad_budget_stops_before_any_trial(workspace: Workspace) -> None:
    result = workspace.run("-m", *SMALL_SEARCH, "search.max_p99_ms=0", check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("runner: error:")]
    assert errors == ["runner: error: search.max_p99_ms=0.0 must be > 0 (milliseconds per "
                      "batch), or null for no latency budget"], result.stderr[-2000:]
    assert workspace.runs() == []
