"""A precision sweep (`-m chip.precision=fp32,int8 bs=...`): the guide's table with a precision
column and top-1 vs fp32, the wide CSV, and the accuracy-vs-throughput plot with its Pareto
front, from Job values (fast) and from a real sweep (slow)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import mlflow
import pytest

from runner import report, sweep
from tests.conftest import FAST_BENCHMARK, Workspace


def _job(number: int, precision: str, bs: int, top1: float, fps: float,
         model: str = "alexnet") -> report.Job:
    return report.Job(job=number, model=model, chip="cpu", bs=str(bs), dataset="imagenet",
                      metrics={"top1": top1, "top5": top1 + 20, "throughput_fps": fps},
                      status="FINISHED", run_id=f"run{number}", precision=precision)


JOBS = [_job(0, "fp32", 1, 56.5, 100.0), _job(1, "int8", 1, 55.9, 180.0),
        _job(2, "fp32", 16, 56.5, 400.0), _job(3, "int8", 16, 55.9, 900.0),
        _job(4, "fp32", 16, 70.0, 90.0, model="resnet50")]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_table_has_a_precision_column_and_top1_against_fp32() -> None:
    jobs = sorted(JOBS[::-1], key=report.Job.sort_key)  # fp32 rows first whatever the order
    assert [(j.model, j.precision, j.bs) for j in jobs][:4] == [
        ("alexnet", "fp32", "1"), ("alexnet", "fp32", "16"), ("alexnet", "int8", "1"),
        ("alexnet", "int8", "16")]
    text = report.sweep_report(jobs, "precisions")
    lines = text.splitlines()
    assert max(map(len, lines)) <= report.WIDTH
    header = next(line for line in lines if line.startswith("| model / chip"))
    assert _cells(header) == ["model / chip", "precision", "top-1 %", "top-5 %",
                              "top-1 vs fp32 pt", "bs1 img/s", "bs16 img/s", "benchmark",
                              "accuracy"]
    rows = [_cells(line) for line in lines if line.startswith("| alexnet / cpu")]
    assert rows == [["alexnet / cpu", "fp32", "56.50", "76.50", "—", "100.0", "400.0", "—", "—"],
                    ["alexnet / cpu", "int8", "55.90", "75.90", "-0.60", "180.0", "900.0", "—",
                     "—"]]
    (resnet,) = [_cells(line) for line in lines if line.startswith("| resnet50 / cpu")]
    assert resnet[1] == "fp32" and resnet[4] == "—" and resnet[5] == ""  # no bs1 job
    assert "top-1 vs fp32: the row's top-1 minus fp32's" in " ".join(text.split())


def test_one_precision_keeps_the_guides_table() -> None:
    text = report.sweep_report([j for j in JOBS if j.precision == "fp32"], "fp32 only")
    header = next(line for line in text.splitlines() if line.startswith("| model / chip"))
    assert "precision" not in header and "vs fp32" not in header
    assert not report.is_precision_sweep([j for j in JOBS if j.precision == "fp32"])
    assert set(sweep.figures(JOBS[:1])) == {"throughput_vs_bs.png", "latency_p99_vs_bs.png"}


def test_the_csv_has_each_jobs_precision_and_top1_against_fp32() -> None:
    table = list(csv.DictReader(io.StringIO(report.csv_table(JOBS))))
    assert [(r["precision"], r["top1_vs_fp32_pt"]) for r in table] == [
        ("fp32", ""), ("int8", "-0.6"), ("fp32", ""), ("int8", "-0.6"), ("fp32", "")]


def test_the_pareto_front_keeps_what_nothing_beats_on_both() -> None:
    points = [(100.0, 56.5), (180.0, 55.9), (400.0, 56.5), (900.0, 55.9), (300.0, 50.0),
              (400.0, 56.0)]
    # (100, 56.5) is beaten by (400, 56.5); (300, 50) and (180, 55.9) by (900, 55.9)
    assert report.pareto_front(points) == [(400.0, 56.5), (900.0, 55.9)]
    assert report.pareto_front([(1.0, 0.0)]) == [(1.0, 0.0)]
    assert report.pareto_front([]) == []


def test_the_plot_has_a_point_per_precision_and_bs_and_the_front(tmp_path: Path) -> None:
    figures = sweep.figures(JOBS)
    figure = figures["accuracy_vs_throughput.png"]
    (axes,) = figure.axes
    points = {(line.get_xdata()[0], line.get_ydata()[0]) for line in axes.get_lines()
              if len(line.get_xdata()) == 1}
    assert points == {(j.metrics["throughput_fps"], j.metrics["top1"]) for j in JOBS}
    fronts = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata(), strict=True))
              for line in axes.get_lines() if line.get_label().endswith("Pareto front")}
    assert fronts["alexnet / cpu: Pareto front"] == [(400.0, 56.5), (900.0, 55.9)]
    figure.savefig(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_precision_sweep_reports_fp32_and_int8_on_the_parent(workspace: Workspace) -> None:
    """fp32 and int8 at two batch sizes, random ResNet-18 weights on 8 generated images: the
    table, the CSV and the plot on the parent run. Random weights make top-1 meaningless (0 or
    12.5 % on 8 images), so the test holds the int8 run to its parity metrics, not accuracy."""
    result = workspace.run("-m", "model=resnet18", "chip.precision=fp32,int8", "bs=2,4",
                           "dataset=synthetic", "dataset.synthetic.num_images=8",
                           "model.weights=random", "chip.calibration.num_images=4",
                           *FAST_BENCHMARK)
    runs = workspace.runs()
    (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED" and len(children) == 4
    int8 = [c for c in children if c.data.params["chip.precision"] == "int8"]
    assert len(int8) == 2
    for child in int8:
        assert child.data.params["chip.calibration.num_images"] == "4"
        assert child.data.params["chip.calibration.method"] == "MinMax"
        assert child.data.metrics["calibration_images"] == 4
        assert 1e-3 < child.data.metrics["parity_max_rel_diff"] < 0.15
    fp32 = [c for c in children if c.data.params["chip.precision"] == "fp32"]
    assert fp32 and all("chip.calibration.method" not in c.data.params for c in fp32)
    header = next(line for line in result.stdout.splitlines()
                  if line.startswith("| model / chip"))
    assert "precision" in header and "top-1 vs fp32 pt" in header
    client = workspace.client()
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert "sweep/accuracy_vs_throughput.png" in artifacts
    table = Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="sweep/table.csv",
        tracking_uri=workspace.tracking_uri)).read_text()
    rows = list(csv.DictReader(io.StringIO(table)))
    assert sorted((r["precision"], r["bs"]) for r in rows) == [
        ("fp32", "2"), ("fp32", "4"), ("int8", "2"), ("int8", "4")]
    assert all(r["top1_vs_fp32_pt"] != "" for r in rows if r["precision"] == "int8")
