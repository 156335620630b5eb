"""Several devices at once: sharding, concurrent workers and their failures, the aggregate
figures, and a two-device CPU run (two ONNX Runtime workers, one intra-op thread each)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest

from runner import device_benchmark, device_pool
from runner.backends import SessionSettings
from runner.config import BenchmarkConfig
from runner.errors import DatasetError
from runner.measurement import Measurement, TimedRun, repeats_isolated
from runner.stages import benchmark as benchmark_stage
from tests import reference
from tests.conftest import Workspace
from tests.device_workers import die_on_device_one, fail_on_device_one, report_process
from tests.test_loader import tiny_classifier


def test_shard_is_round_robin_and_skips_idle_devices() -> None:
    assert device_pool.shard([10, 11, 12, 13, 14], [0, 3]) == {0: [10, 12, 14], 3: [11, 13]}
    assert device_pool.shard([10], [0, 1, 2]) == {0: [10]}
    assert device_pool.shard([], [0, 1]) == {}


def test_one_device_runs_in_this_process() -> None:
    result = device_pool.run_on_devices(report_process, {5: ("x",)})
    assert result[5][:3] == (5, "x", os.getpid())


def test_one_device_runs_in_a_fresh_process_when_asked() -> None:
    (only,) = device_pool.run_on_devices(report_process, {5: ("x",)}, fresh_process=True).values()
    assert only[:2] == (5, "x") and only[2] != os.getpid()


def test_several_devices_run_in_their_own_processes_at_once() -> None:
    result = device_pool.run_on_devices(report_process, {0: ("a",), 1: ("b",)})
    assert [r[:2] for r in result.values()] == [(0, "a"), (1, "b")]
    pids = {r[2] for r in result.values()}
    assert len(pids) == 2 and os.getpid() not in pids
    # both passed start_together before either went on: their clocks read close together
    assert abs(result[0][3] - result[1][3]) < 5e9


def test_a_worker_error_names_its_device() -> None:
    with pytest.raises(DatasetError, match=r"^device 1: chunk 3 is unreadable$"):
        device_pool.run_on_devices(fail_on_device_one, {0: (), 1: ()})


def test_a_dead_worker_is_reported() -> None:
    with pytest.raises(RuntimeError, match=r"worker for device 1 died \(exit code 3\)"):
        device_pool.run_on_devices(die_on_device_one, {0: (), 1: ()})


def _device_result(device: int, compute_ms: list[float], end_s: float, busy_s: tuple[float, float],
                   own: list[float] | None = None) -> device_benchmark.DeviceBenchmark:
    timed = TimedRun(batch_size=4, compute_ms=compute_ms, wall_s=sum(compute_ms) / 1e3,
                     trials=1, stable=True, window_fps=[1.0], spread=0.05)
    measurement = Measurement(batch_size=4, warmup_iters=1, warmup_s=0.1, runs=[timed])
    return device_benchmark.DeviceBenchmark(device, measurement, {"device": device}, own or [],
                                   int(end_s * 1e9), int(busy_s[0] * 1e9), int(busy_s[1] * 1e9))


def test_aggregate_sums_devices_measured_together() -> None:
    # device 0 timed from 100 s to 101 s, device 1 from 100.5 s to 101.5 s, both busy throughout
    first = _device_result(0, [10.0] * 100, end_s=101.0, busy_s=(99.5, 101.6))
    second = _device_result(1, [20.0] * 50, end_s=101.5, busy_s=(99.5, 101.6), own=[15.0] * 50)
    metrics = device_benchmark.aggregate_metrics([first, second], "ais_bench", bs=4)
    assert metrics["throughput_fps_dev0"] == pytest.approx(400.0)
    assert metrics["throughput_fps_dev1"] == pytest.approx(200.0)
    assert metrics["throughput_fps"] == pytest.approx(600.0)
    assert metrics["wall_fps"] == pytest.approx(4 * 100 / 1.0 + 4 * 50 / 1.0)
    assert metrics["benchmark_overlap"] == pytest.approx(1.0)
    assert metrics["benchmark_devices"] == 2
    assert metrics["latency_ms_p50"] == pytest.approx(10.0)
    # the runtime's own figure only where every device reports it
    assert metrics["ais_bench_throughput_fps_dev1"] == pytest.approx(1000 * 4 / 15)
    assert "ais_bench_throughput_fps" not in metrics
    # device 1 became busy at 100.8 s: 0.2 s of device 0's timed second had both busy
    late = _device_result(1, [20.0] * 50, end_s=101.5, busy_s=(100.8, 101.6))
    assert device_benchmark.aggregate_metrics([first, late], "onnxruntime", bs=4)[
        "benchmark_overlap"] == pytest.approx(0.2)
    single = device_benchmark.aggregate_metrics([second], "ais_bench", bs=4)
    assert single["throughput_fps"] == pytest.approx(200.0)
    assert single["ais_bench_throughput_fps"] == pytest.approx(1000 * 4 / 15)
    assert "benchmark_devices" not in single


def test_isolated_repeats_are_joined_and_judged_repeat_by_repeat() -> None:
    # two repeats on two devices, each repeat its own processes: in the first both devices were
    # busy throughout; in the second device 1 came up 0.8 s into device 0's timed second
    repeats = {0: [_device_result(0, [10.0] * 100, 101.0, (99.5, 101.6)),
                   _device_result(0, [12.5] * 80, 201.0, (199.5, 201.6))],
               1: [_device_result(1, [10.0] * 100, 101.0, (99.5, 101.6), own=[9.0] * 100),
                   _device_result(1, [10.0] * 100, 201.0, (200.8, 201.6), own=[9.0] * 100)]}
    joined = [device_benchmark.merge_repeats(repeats[d]) for d in (0, 1)]
    first = joined[0]
    assert [run.throughput_fps for run in first.measurement.runs] == pytest.approx([400, 320])
    assert first.measurement.warmup_iters == 2  # each repeat warmed up in its own process
    assert first.repeats == repeats[0] and joined[1].own_compute_ms == [9.0] * 200
    assert first.own_compute_ms == []  # device 0's repeats have no runtime figure
    metrics = device_benchmark.aggregate_metrics(joined, "onnxruntime", bs=4)
    assert metrics["benchmark_overlap"] == pytest.approx(0.2)  # the worse repeat's
    assert metrics["benchmark_isolated_repeats"] == 1.0
    assert metrics["throughput_fps_dev0"] == pytest.approx(4000 / ((1000 + 1000) / 180))
    single = device_benchmark.aggregate_metrics([joined[0]], "onnxruntime", bs=4)
    assert single["benchmark_isolated_repeats"] == 1.0 and single["benchmark_repeats"] == 2
    assert single["throughput_cv"] == pytest.approx(80 / 2 ** 0.5 / 360)
    together = device_benchmark.aggregate_metrics([repeats[0][0]], "onnxruntime", bs=4)
    assert together["benchmark_isolated_repeats"] == 0.0


def test_each_isolated_repeat_is_a_fresh_process_with_its_own_warm_up(tmp_path: Path) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    session = SessionSettings(runtime="onnxruntime", device_type="cpu",
                              providers=("CPUExecutionProvider",), precision="fp32", threads=1,
                              channels_last=False, dynamic_batch_sizes=(), compile=False,
                              cuda_graphs=False)
    batch = device_benchmark.BatchSpec(bs=2, input_size=8, layout="NCHW", kind="random", seed=0)
    method = BenchmarkConfig(warmup_iters=2, warmup_min_s=0, min_iters=5, min_duration_s=0,
                             max_trials=1, repeats=3)
    for devices in ((0,), (0, 1)):
        results = device_benchmark.benchmark(devices, session, model, batch, method)
        pids = [r.process_id for result in results for r in result.repeats]
        assert len(pids) == 3 * len(devices) == len(set(pids)) and os.getpid() not in pids
        for result in results:
            assert len(result.measurement.runs) == 3
            assert result.measurement.warmup_iters == 3 * 2
        metrics = device_benchmark.aggregate_metrics(results, "onnxruntime", bs=2)
        assert metrics["benchmark_isolated_repeats"] == 1.0
    in_one = device_benchmark.benchmark((0,), session, model, batch,
                                        dataclasses.replace(method, isolate_repeats=False))
    assert in_one[0].process_id == os.getpid() and in_one[0].repeats == []
    assert in_one[0].measurement.warmup_iters == 2
    assert not repeats_isolated(dataclasses.replace(method, repeats=1))  # nothing to isolate

    # the stage says so: a process id per repeat, the method in words, the metric compare reads
    stage = benchmark_stage.Settings(batch, method, session, "cpu", (0,), "code", "host",
                                     lock_dir=str(tmp_path / "locks"))
    output = benchmark_stage.run(stage, {"model": model}, tmp_path)
    report = json.loads((tmp_path / benchmark_stage.RESULT_FILE).read_text())
    assert len(set(report["repeat_process_ids"])) == len(report["repeats"]) == 3
    assert "each in a fresh process" in report["method"]["repeats"]
    assert output.metrics["benchmark_isolated_repeats"] == 1.0


def test_one_off_session_costs_are_metrics_apart_from_the_timed_calls() -> None:
    # torch.compile's and the CUDA graph capture's seconds, as a TorchSession reports them
    first = _device_result(0, [10.0] * 10, end_s=101.0, busy_s=(99.5, 101.6))
    second = _device_result(1, [10.0] * 10, end_s=101.0, busy_s=(99.5, 101.6))
    first.session.update(compile_s=12.5, graph_capture_s=0.25)
    second.session.update(compile_s=14.0, graph_capture_s=0.5)
    single = device_benchmark.aggregate_metrics([first], "torch", bs=4)
    assert (single["compile_s"], single["graph_capture_s"]) == (12.5, 0.25)
    assert single["latency_ms_mean"] == pytest.approx(10.0)  # not in the timed calls
    both = device_benchmark.aggregate_metrics([first, second], "torch", bs=4)
    assert (both["compile_s"], both["compile_s_dev0"], both["compile_s_dev1"]) == (14.0, 12.5, 14.0)
    plain = device_benchmark.aggregate_metrics([_device_result(0, [10.0], 101.0, (99.5, 101.6))],
                                               "onnxruntime", bs=4)
    assert "compile_s" not in plain and "graph_capture_s" not in plain


@pytest.mark.slow
def test_two_cpu_devices_report_each_and_their_aggregate(
        workspace: Workspace, fast_benchmark: tuple[str, ...]) -> None:
    # bs=1: 24 images are two infer chunks of 16 and 8, one per device
    workspace.run("model=alexnet", "bs=1", "dataset=synthetic", "dataset.synthetic.num_images=24",
                  "model.weights=random", "chip=cpu", "chip.threads=1", "chip.devices=[0,1]",
                  *fast_benchmark, "benchmark.min_duration_s=1.0", "cache.force=[infer]")
    (run,) = workspace.runs()
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["benchmark_devices"] == 2
    assert metrics["throughput_fps_dev0"] > 0 and metrics["throughput_fps_dev1"] > 0
    assert metrics["throughput_fps"] == pytest.approx(
        metrics["throughput_fps_dev0"] + metrics["throughput_fps_dev1"])
    assert metrics["benchmark_overlap"] > 0.9  # timed while both devices were busy
    assert workspace.record(run)["environment"]["devices"] == "0,1"
    artifacts = Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, tracking_uri=workspace.tracking_uri))
    report = json.loads((artifacts / "stages" / "benchmark" / "benchmark.json").read_text())
    assert [d["device"] for d in report["devices"]] == [0, 1]
    assert [d["session"]["intra_op_threads"] for d in report["devices"]] == [1, 1]
    for device in report["devices"]:  # the timed calls of each repeat
        assert sum(len(repeat) for repeat in device["compute_ms"]) >= 5
    assert "devices" in report["method"]
    e2e = json.loads((artifacts / "stages" / "e2e" / "e2e.json").read_text())
    assert {d: times["images"] for d, times in e2e["per_device_times"].items()} == {"0": 16, "1": 8}
    assert e2e["metrics"]["e2e_images"] == 24 and e2e["metrics"]["e2e_fps_dev1"] > 0
    # the two shards, put back in order, are the exported model's logits
    expected = reference.onnx_cpu_logits(workspace, run)
    assert np.abs(reference.run_logits(workspace, run) - expected).max() <= 1e-4
