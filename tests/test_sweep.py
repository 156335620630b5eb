"""Sweeps (`python -m runner -m ...`): the MLflow parent run and its children, the guide's table
and plots, failing jobs, resume from the stage cache, parallel jobs on one SQLite store, and
scale-out on a real local Ray cluster and a real MLflow tracking server."""

from __future__ import annotations

import csv
import io
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from runner import report, sweep, tracking
from runner.config import PROJECT_ROOT, MlflowConfig
from tests.conftest import FAST_BENCHMARK, Workspace, compose_config
from tests.services import RAY_LOOPBACK_ENV, mlflow_server, processes_mentioning, ray_head
from tests.test_end_to_end import METRICS
from tests.warm_cli import run_cli

SMALL = ("dataset=synthetic", "dataset.synthetic.num_images=8", "model.weights=random",
         *FAST_BENCHMARK)
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _parents_and_children(space: Workspace) -> tuple[list, list]:
    runs = space.runs()
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _children_of(parent, runs: list) -> list:
    return sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                  key=lambda r: int(r.data.tags["sweep.job_num"]))


def _table(client: MlflowClient, parent) -> list[dict[str, str]]:
    path = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id,
                                               artifact_path="sweep/table.csv",
                                               tracking_uri=client.tracking_uri)
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


# -- the table, from runs in a real store --

@pytest.mark.slow
def test_jobs_come_from_the_children_and_list_jobs_that_left_no_run(tmp_path: Path) -> None:
    settings = MlflowConfig(f"sqlite:///{tmp_path / 'db'}", str(tmp_path / "art"), "runner")
    experiment = tracking.experiment_id(settings)
    client = MlflowClient(settings.tracking_uri)
    parent = client.create_run(experiment).info.run_id
    other_parent = client.create_run(experiment).info.run_id
    published = report.Published("the guide", "pth", {"pth": (56.5, 79.0)}, "cpu",
                                 {16: 1000.0}, 1.0)

    def child(parent_id: str, job: int, bs: str, status: str, tags: dict[str, str] | None = None,
              **data: float) -> str:
        run = client.create_run(experiment, tags={
            "mlflow.parentRunId": parent_id, "sweep.job_num": str(job), "model": "alexnet",
            "chip": "cpu", "dataset": "imagenet", "cache": "1/2 hit", "weights_kind": "url",
            report.PUBLISHED_TAG: published.to_json(), **(tags or {}),
            **({"error": "WeightsError: no such file"} if status == "FAILED" else {})})
        client.log_param(run.info.run_id, "bs", bs)
        for key, value in data.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    finished = child(parent, 1, "16", "FINISHED", top1=56.0, top5=77.5, throughput_fps=1234.5678,
                     latency_ms_p99=13.0)
    failed = child(parent, 0, "4", "FAILED")
    invalid = child(parent, 3, "8", "FINISHED",
                    {"benchmark.verdict": "INVALID", "benchmark.verdict_reasons": "cv 9% > 5%",
                     "benchmark.reused_from": "abc123"},
                    top1=56.0, top5=77.5, throughput_fps=900.0, throughput_fps_min=850.0,
                    throughput_fps_max=950.0, benchmark_valid=0.0)
    child(other_parent, 0, "1", "FINISHED", top1=1.0)  # another sweep's: not in this table

    runs = sweep.children(client, experiment, parent)
    planned = [["model=alexnet", "bs=4"], ["model=alexnet", "bs=16"], ["model=alexnet", "bs=32"],
               ["model=alexnet", "bs=8"]]
    jobs = report.build_jobs(runs, planned)
    assert [(j.bs, j.status, j.run_id) for j in jobs] == [
        ("4", "FAILED", failed), ("8", "FINISHED", invalid), ("16", "FINISHED", finished),
        ("32", "NO RUN", "")]
    assert jobs[0].error == "WeightsError: no such file"
    assert "job 2 (model=alexnet bs=32)" in jobs[3].error

    table = list(csv.DictReader(io.StringIO(report.csv_table(jobs))))
    assert tuple(table[0]) == report.CSV_COLUMNS
    row16 = table[2]
    assert row16["throughput_fps"] == "1234.57" and row16["top1"] == "56"
    assert row16["e2e_fps"] == "" and row16["published_fps"] == "1000.0"
    assert float(row16["fps_vs_published"]) == pytest.approx(1.2346, abs=1e-4)
    # top-5 is 1.5 points below the published 79.0: beyond the 1 point rule
    assert (row16["accuracy"], row16["top5_delta_pt"]) == ("FAIL", "-1.5")
    assert table[1]["verdict"] == "INVALID" and table[1]["reused_from"] == "abc123"

    text = report.sweep_report(jobs, "a sweep")
    lines = text.splitlines()
    assert max(map(len, lines)) <= report.WIDTH
    header = next(line for line in lines if line.startswith("| model / chip"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "model / chip", "top-1 %", "top-5 %", "bs4 img/s", "bs8 img/s", "bs16 img/s",
        "benchmark", "accuracy"]
    measured = next(line for line in lines if line.startswith("| alexnet / cpu"))
    cells = [c.strip() for c in measured.strip("|").split("|")]
    assert cells == ["alexnet / cpu", "56.00", "77.50", "FAILED", "900.0!*", "1235", "INVALID",
                     "FAIL"]
    published_row = next(line for line in lines if line.startswith("|   published (pth, cpu)"))
    assert [c.strip() for c in published_row.strip("|").split("|")][1:6] == [
        "56.5", "79", "—", "—", "1000"]
    difference = next(line for line in lines if line.startswith("|   difference (pth; x)"))
    assert [c.strip() for c in difference.strip("|").split("|")][1:6] == [
        "-0.50", "-1.50", "", "", "1.23x"]
    assert "bs 8: INVALID: cv 9% > 5%" in text and "reused from run abc123" in text
    assert "job 0 (alexnet / cpu bs 4) FAILED: WeightsError: no such file" in text
    assert "job 2 (alexnet bs 32) NO RUN" in " ".join(lines)


def test_the_guides_rule_passes_within_the_drop_and_applies_only_to_comparable_runs() -> None:
    published = report.Published("g", "pth", {"pth": (56.527, 79.068)}, "ascend310p3",
                                 {16: 9975.0}, 1.0)
    close = {"top1": 55.6, "top5": 78.2, "throughput_fps": 4987.5}
    compared = report.compare(published, 16, close, "")
    assert compared.accuracy == report.PASS
    assert compared.deltas == pytest.approx((-0.927, -0.868))
    assert compared.fps_ratio == pytest.approx(0.5)
    assert report.compare(published, 16, {**close, "top1": 55.5}, "").accuracy == report.FAIL
    assert report.compare(published, 4, close, "").fps_ratio is None  # no figure at bs 4
    why = report.not_comparable("random", "imagenet[:32]")
    assert why == "random weights; dataset imagenet[:32] is not the whole ImageNet val"
    assert report.compare(published, 16, close, why).accuracy == report.NOT_APPLICABLE
    assert report.not_comparable("url", report.FULL_IMAGENET) == ""
    assert report.Published.from_json(published.to_json()) == published


def test_planned_jobs_are_the_basic_sweepers_product_in_job_order() -> None:
    config = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": BASIC_SWEEPER, "params": {"seed": "0,1"}},
        "overrides": {"task": ["model=alexnet,resnet18", "bs=1,4", "dataset=synthetic"]}}})
    jobs = sweep.planned_jobs(config)
    assert jobs is not None and len(jobs) == 8
    assert jobs[0] == ["seed=0", "model=alexnet", "bs=1", "dataset=synthetic"]
    assert jobs[-1] == ["seed=1", "model=resnet18", "bs=4", "dataset=synthetic"]
    config.hydra.sweeper._target_ = "hydra_plugins.hydra_optuna_sweeper.OptunaSweeper"
    assert sweep.planned_jobs(config) is None


def test_params_are_the_parsed_values_never_hydras_escaped_text() -> None:
    # what the basic sweeper hands a job: its values escaped (`sqlite\\:///`)
    job = ["model.weights=random", "mlflow.tracking_uri=sqlite\\:///tmp/x.db", "bs=4",
           "dataset.root='/data/a b,c'", "hydra.run.dir=/x/${now:%H}", "debug=smoke"]
    tree = OmegaConf.to_container(compose_config("debug=smoke", "dataset.root='/data/a b,c'"),
                                  resolve=True)
    params = tracking.run_params(tree, job, {"debug": "smoke", "model": "alexnet"})
    assert params["dataset.root"] == "/data/a b,c" and params["debug"] == "smoke"
    assert params["bs"] == 4 and "mlflow.tracking_uri" not in params  # where, not what
    assert not any("\\" in str(v) or "${" in str(v) for v in params.values())
    assert len(params) <= tracking.MAX_PARAMS
    assert sweep.sweep_params(["model=alexnet,resnet18", "+x.y=3", "cache.force=[all]",
                               "dataset.root='/d/a,b'", "hydra.launcher.n_jobs=2"]) == {
        "sweep.model": "alexnet,resnet18", "sweep.x.y": "3", "sweep.cache.force": "['all']",
        "sweep.dataset.root": "/d/a,b"}


def test_a_tracking_server_keeps_the_artifacts_unless_a_uri_is_given(tmp_path: Path) -> None:
    def uri(tracking_uri: str, location: str) -> str | None:
        return tracking._artifact_uri(MlflowConfig(tracking_uri, location, "runner"))

    assert uri("sqlite:////x/db", str(tmp_path)) == tmp_path.as_uri()
    assert uri("http://127.0.0.1:5000", str(tmp_path)) is None
    assert uri("http://127.0.0.1:5000", "s3://bucket/runs") == "s3://bucket/runs"


def _open_store(db: str) -> str:
    return tracking.experiment_id(MlflowConfig(f"sqlite:///{db}", "/tmp/unused", "runner"))


@pytest.mark.slow
def test_processes_opening_a_new_sqlite_store_at_once_agree(tmp_path: Path) -> None:
    """Without the lock, MLflow's migrations race: `table ... already exists`."""
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        ids = pool.map(_open_store, [str(tmp_path / "mlflow.db")] * 3)
    assert len(set(ids)) == 1


def test_launcher_presets_compose() -> None:
    def hydra_cfg(*overrides: str) -> str:
        result = run_cli(["--cfg", "hydra", "-p", "hydra.launcher", *overrides], timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    ray = hydra_cfg("hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=h:6379")
    assert "RayLauncher" in ray and "address: h:6379" in ray
    assert "object_store_memory: null" in ray
    slurm = hydra_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert "SlurmLauncher" in slurm and "partition: gpu" in slurm


# -- whole sweeps through the CLI --

@pytest.mark.slow
def test_a_2x2_sweep_makes_a_parent_four_children_the_table_and_plots_then_resumes(
    workspace: Workspace,
) -> None:
    command = ("-m", "model=alexnet,resnet18", "bs=1,2", *SMALL)
    first = workspace.run(*command)
    parents, children = _parents_and_children(workspace)
    assert len(parents) == 1 and len(children) == 4
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.model"] == "alexnet,resnet18"
    assert parent.data.params["sweep.bs"] == "1,2"
    assert parent.data.metrics["jobs_finished"] == 4 and parent.data.metrics["jobs_failed"] == 0
    assert {(c.data.tags["model"], c.data.params["bs"]) for c in children} == {
        ("alexnet", "1"), ("alexnet", "2"), ("resnet18", "1"), ("resnet18", "2")}
    for child in children:
        assert child.info.status == "FINISHED"
        assert set(METRICS) <= set(child.data.metrics)
        # lean: the settings users vary, named by their keys; bs once; no env.* or cache tags
        assert len(child.data.params) <= 30
        assert "bs" not in child.data.tags and not any(k.startswith("override.")
                                                        for k in child.data.params)
        assert not any(k.startswith(("env.", "cache_key.", "cache.")) for k in child.data.tags)
        assert child.data.tags["dataset"] == "synthetic (8 images)"
        assert child.data.tags["mlflow.note.content"].startswith(
            f"### {child.data.tags['model']} on cpu, bs {child.data.params['bs']}")
    # the same param and metric names in every run: what the MLflow compare view lines up
    assert len({frozenset(c.data.params) for c in children}) == 1
    assert len({frozenset(c.data.metrics) - {"top1_delta_pt", "top5_delta_pt"}
                for c in children}) == 1

    client = workspace.client()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/report.md", "sweep/table.csv", "sweep/throughput_vs_bs.png",
                         "sweep/latency_p99_vs_bs.png"}
    png = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id,
                                              artifact_path="sweep/throughput_vs_bs.png",
                                              tracking_uri=workspace.tracking_uri)
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_id = {c.info.run_id: c for c in children}
    table = _table(client, parent)
    assert [(row["model"], row["bs"]) for row in table] == [
        ("alexnet", "1"), ("alexnet", "2"), ("resnet18", "1"), ("resnet18", "2")]
    for row in table:
        child = by_id[row["run_id"]]
        for column in ("top1", "top5", "throughput_fps", "latency_ms_p99"):
            assert float(row[column]) == pytest.approx(child.data.metrics[column], rel=1e-5)
        assert (row["chip"], row["dataset"], row["status"]) == (
            "cpu", "synthetic (8 images)", "FINISHED")

    # the report: the parent's Description, report.md and the terminal's, 120 columns at most
    text = parent.data.tags["mlflow.note.content"]
    assert text == Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="sweep/report.md",
        tracking_uri=workspace.tracking_uri)).read_text()
    assert text in first.stdout
    lines = text.splitlines()
    assert max(map(len, lines)) <= 120
    assert lines[0].startswith("## Sweep") and lines[0].endswith("dataset synthetic (8 images)")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines
            if line.startswith("|") and not line.startswith("|-")]
    assert rows[0] == ["model / chip", "top-1 %", "top-5 %", "bs1 img/s", "bs2 img/s",
                       "benchmark", "accuracy"]
    labels = [r[0] for r in rows[1:]]
    # a row per model and chip; alexnet's published figures (the guide's pth) beneath it
    assert labels == ["alexnet / cpu", "published (pth)", "difference (pth; x)",
                      "resnet18 / cpu"]
    for label in ("alexnet", "resnet18"):
        (measured,) = [r for r in rows if r[0] == f"{label} / cpu"]
        jobs = sorted((c for c in children if c.data.tags["model"] == label),
                      key=lambda c: int(c.data.params["bs"]))
        assert measured[1] == f"{jobs[0].data.metrics['top1']:.2f}"
        fps = [j.data.metrics["throughput_fps"] for j in jobs]
        assert [float(v.rstrip("!*")) for v in measured[3:5]] == pytest.approx(fps, abs=0.051)
    assert rows[2][1:3] == ["56.527", "79.068"]
    assert rows[1][6] == "N/A"  # random weights on generated images: the rule does not apply
    assert "random weights; dataset synthetic (8 images) is not the whole ImageNet val" in text
    assert "mlflow ui --backend-store-uri" in first.stdout
    assert (f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
            "?workflowType=machine_learning") in first.stdout

    # the same command again, resuming: every stage of every job comes from the cache, the
    # measurements too, as asked, each naming the run that measured it
    second = workspace.run(*command, "cache.reuse_measurements=true")
    parents, children = _parents_and_children(workspace)
    assert len(parents) == 2 and len(children) == 8
    latest = max(parents, key=lambda r: r.info.start_time)
    again = _children_of(latest, children)
    assert len(again) == 4
    stages = len(again[0].data.tags["stages"].split(","))  # the `all` preset
    first_ids = {c.info.run_id for c in children} - {c.info.run_id for c in again}
    for child in again:
        cache = workspace.cache_states(child)
        assert len(cache) == stages and set(cache.values()) == {"hit"}
        assert child.data.tags["cache"] == f"{stages}/{stages} hit"
        assert child.data.tags["benchmark.reused_from"] in first_ids
        assert child.data.tags["e2e.reused_from"] in first_ids
    assert [row["cache"] for row in _table(client, latest)] == [f"{stages}/{stages} hit"] * 4
    assert latest.data.tags["mlflow.note.content"] in second.stdout


@pytest.mark.slow
def test_failing_jobs_are_listed_failed_and_the_others_finish(workspace: Workspace) -> None:
    # bs=0 is rejected before the job's run starts; the missing checkpoint fails in export
    result = workspace.run("-m", "model.weights=random,/nowhere/alexnet.pth", "bs=2,0",
                           "stage=accuracy", *SMALL[:2], check=False)
    assert result.returncode == 1
    assert "runner: error: 3 of 4 sweep jobs did not finish" in result.stderr
    assert "Traceback" not in result.stderr
    (parent,), children = _parents_and_children(workspace)
    assert parent.info.status == "FAILED"
    assert len(children) == 4
    by_job = {(c.data.params["model.weights"], c.data.params["bs"]): c for c in children}
    assert by_job[("random", "2")].info.status == "FINISHED"
    assert "top1" in by_job[("random", "2")].data.metrics
    for key in (("random", "0"), ("/nowhere/alexnet.pth", "0")):
        assert by_job[key].info.status == "FAILED"
        assert "bs=0 must be a positive integer" in by_job[key].data.tags["error"]
    missing = by_job[("/nowhere/alexnet.pth", "2")]
    assert missing.info.status == "FAILED" and "/nowhere/alexnet.pth" in missing.data.tags["error"]
    table = _table(workspace.client(), parent)
    assert sorted(row["status"] for row in table) == ["FAILED", "FAILED", "FAILED", "FINISHED"]
    assert all(row["error"] for row in table if row["status"] == "FAILED")


@pytest.mark.slow
def test_an_interrupted_sweep_reruns_only_unfinished_stages(workspace: Workspace) -> None:
    # a dataset no other test uses, so its preprocess and later entries are new here
    command = [sys.executable, "-m", "runner", "-m", "model=alexnet", "bs=1,2",
               "dataset=synthetic", "dataset.synthetic.num_images=10",
               "dataset.synthetic.seed=7919", "model.weights=random",
               *FAST_BENCHMARK, *workspace.overrides()]
    preprocess_dir = workspace.cache / "preprocess"
    before = set(preprocess_dir.glob("*")) if preprocess_dir.exists() else set()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            new = [p for p in preprocess_dir.glob("*") if p not in before
                   and p.is_dir() and not p.name.endswith(".partial")]
            if new:
                break
            time.sleep(0.1)
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        process.send_signal(signal.SIGINT)  # Ctrl-C, while job 0 is past preprocess
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    finished_before = {(p.parent.name, p.name) for p in workspace.cache.glob("*/*")
                       if p.is_dir() and not p.name.endswith(".partial")}
    (stopped,), children = _parents_and_children(workspace)
    assert stopped.info.status == "FAILED"
    assert "stopped before all its jobs ended" in stopped.data.tags["error"]
    assert [c.info.status for c in children] == ["KILLED"]

    # resuming: the finished job's measurements are reused, as asked
    workspace.run(*command[3:-len(workspace.overrides())], "cache.reuse_measurements=true")
    parents, children = _parents_and_children(workspace)
    rerun = _children_of(max(parents, key=lambda r: r.info.start_time), children)
    assert [c.info.status for c in rerun] == ["FINISHED", "FINISHED"]
    states = []
    made = set(finished_before)  # and what the rerun's earlier job made (job 1 shares job 0's
    # bs-independent entries: export, convert, preprocess, reference)
    for child in sorted(rerun, key=lambda c: int(c.data.tags["sweep.job_num"])):
        record = workspace.record(child)["stages"]
        for stage in ("export", "convert", "preprocess", "infer", "reference", "parity",
                      "evaluate", "benchmark", "e2e"):
            entry = (stage, record[stage]["key"])
            states.append(record[stage]["cache"])
            assert record[stage]["cache"] == ("hit" if entry in made else "miss")
            made.add(entry)
    assert workspace.cache_states(rerun[0])["preprocess"] == "hit"
    assert "miss" in states


@pytest.mark.slow
@pytest.mark.parametrize("attempt", [1, 2])
def test_parallel_joblib_jobs_share_a_new_sqlite_store(workspace: Workspace, attempt: int) -> None:
    workspace.template = None  # each attempt starts from a store that does not exist
    assert not workspace.db.exists()
    result = workspace.run("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4",
                           "model=alexnet", "bs=1,2,3,4", "stage=performance",
                           "model.weights=random", *FAST_BENCHMARK)
    assert "database is locked" not in result.stderr
    (parent,), children = _parents_and_children(workspace)
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["bs"] for c in children) == ["1", "2", "3", "4"]
    assert all(c.info.status == "FINISHED" and "throughput_fps" in c.data.metrics
               for c in children)
    assert "JoblibLauncher" in parent.data.tags["sweep.launcher"]


@pytest.mark.slow
def test_ray_launcher_runs_the_jobs_on_a_local_ray_cluster(workspace: Workspace) -> None:
    with ray_head() as head:
        address = head.address
        result = workspace.run("-m", "hydra/launcher=ray_cluster",
                               f"hydra.launcher.ray.init.address={address}", "model=alexnet",
                               "bs=1,2", "stage=performance", "model.weights=random",
                               *FAST_BENCHMARK, env=RAY_LOOPBACK_ENV)
    output = result.stdout + result.stderr
    assert f"Connecting to existing Ray cluster at address: {address}" in output
    assert "(_run_job pid=" in output  # the jobs' logs, relayed from Ray worker processes
    (parent,), children = _parents_and_children(workspace)
    assert parent.info.status == "FINISHED"
    assert "RayLauncher" in parent.data.tags["sweep.launcher"]
    assert sorted(c.data.params["bs"] for c in children) == ["1", "2"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert not processes_mentioning(str(head.temp_dir)), "a Ray process outlived the test"


@pytest.mark.slow
def test_a_sweep_logs_to_an_mlflow_server_over_http(workspace: Workspace,
                                                    tmp_path: Path) -> None:
    server_root = tmp_path / "server"
    server_root.mkdir()
    with mlflow_server(server_root) as uri:
        workspace.tracking_uri = uri  # the CLI and the reads below both go over HTTP
        workspace.run("-m", "model=alexnet", "bs=1,2", "stage=performance",
                      "model.weights=random", *FAST_BENCHMARK)
        (parent,), children = _parents_and_children(workspace)
        assert parent.info.status == "FINISHED"
        assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
        table = _table(workspace.client(), parent)
        assert sorted(row["bs"] for row in table) == ["1", "2"]
        assert {row["run_id"] for row in table} == {c.info.run_id for c in children}
    # the server stored the artifacts it was sent in its own folder, not this workspace's
    assert list((server_root / "served-artifacts").rglob("table.csv"))
    assert not (workspace.root / "mlruns").exists()


@pytest.mark.slow
def test_a_sweep_whose_store_cannot_be_opened_stops_before_any_job(workspace: Workspace,
                                                                   tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    workspace.tracking_uri = f"sqlite:///{blocker}/mlflow.db"
    result = workspace.run("-m", "bs=1,2", "stage=performance", "model.weights=random",
                           check=False)
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("runner: error:")]
    assert f"cannot open the sweep's MLflow run at sqlite:///{blocker}/mlflow.db" in line
    assert "Launching" not in result.stdout + result.stderr
