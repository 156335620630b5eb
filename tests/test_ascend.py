"""The Ascend path (atc + ais_bench) against stand-ins of the tools' documented interfaces
(tests/standins/): the exact atc command, the OM cache key, both ais_bench API releases, the
padding of a short batch, the errors when CANN, atc or ais_bench is missing, and results flowing
through evaluate into MLflow. No NPU is involved anywhere."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch

from runner.backends import ConversionError, SessionSettings, ais_bench, ascend
from runner.errors import ConfigError, ToolMissingError
from runner.models import build
from runner.settings import key_settings
from runner.stages import convert as convert_stage
from runner.stages.export import export_onnx, onnx_spec
from tests import reference
from tests.conftest import Workspace, run_config
from tests.standins import CANN_VERSION, AscendStandins, install

STANDIN_MODULES = ("ais_bench", "ais_bench.infer", "ais_bench.infer.interface", "aclruntime")


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> AscendStandins:
    return install(tmp_path_factory.mktemp("ascend-standins"))


@pytest.fixture(scope="module")
def alexnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = run_config("model.weights=random")
    target = tmp_path_factory.mktemp("onnx") / "model.onnx"
    with torch.no_grad():
        net = build.build(cfg.model.arch, cfg.model.arch_kwargs, None, seed=0)
        export_onnx(net, onnx_spec(cfg), target)
    return target


@pytest.fixture
def use_standins(standins: AscendStandins,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AscendStandins]]:
    """In this process: `use(**choices)` makes exactly the chosen stand-ins visible."""

    def use(**choices: object) -> AscendStandins:
        env = standins.env(**choices)  # type: ignore[arg-type]
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for site in env["PYTHONPATH"].split(":"):
            if site:
                monkeypatch.syspath_prepend(site)
        for name in STANDIN_MODULES:
            monkeypatch.delitem(sys.modules, name, raising=False)
        importlib.invalidate_caches()
        ascend.npu_smi_info.cache_clear()
        standins.clear_calls()
        return standins

    yield use
    for name in STANDIN_MODULES:
        sys.modules.pop(name, None)
    ascend.npu_smi_info.cache_clear()


def test_atc_command_is_the_guides(use_standins, alexnet_onnx: Path, tmp_path: Path) -> None:
    standins = use_standins()
    cfg = run_config("chip=ascend310p3", "bs=4", "model.weights=random")
    om_path, facts = ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))
    (call,) = standins.calls("atc")
    assert call["argv"] == [
        f"--model={alexnet_onnx}", "--framework=5", f"--output={tmp_path}/model",
        "--input_format=NCHW", "--input_shape=actual_input_1:4,3,224,224",
        "--soc_version=Ascend310P3", "--precision_mode=force_fp16", "--log=error",
    ]
    assert call["cwd"] == str(tmp_path)
    assert om_path == tmp_path / "model.om"
    assert facts["atc_command"] == ["atc", *call["argv"]]
    assert facts["cann"] == CANN_VERSION
    assert "ATC run success" in (tmp_path / "atc.log").read_text()


def test_atc_options_and_precision(use_standins, alexnet_onnx: Path, tmp_path: Path) -> None:
    standins = use_standins()
    cfg = run_config("chip=ascend310", "bs=1", "chip.precision=fp32", "model.weights=random",
                     "+chip.atc_options.op_select_implmode=high_performance",
                     "+chip.atc_options.log=info")
    ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))
    (call,) = standins.calls("atc")
    assert call["argv"][-4:] == ["--soc_version=Ascend310", "--precision_mode=force_fp32",
                                 "--log=info", "--op_select_implmode=high_performance"]
    managed = run_config("chip=ascend310", "+chip.atc_options.soc_version=Ascend310P3")
    with pytest.raises(ConfigError, match=r"chip.atc_options.soc_version is set by the runner"):
        ais_bench.convert_settings(managed)


def test_soc_version_auto_comes_from_npu_smi(use_standins, alexnet_onnx: Path,
                                             tmp_path: Path) -> None:
    standins = use_standins(chips="910B3,910B3")
    cfg = run_config("chip=ascend910b", "bs=2", "model.weights=random")
    ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))
    (call,) = standins.calls("atc")
    assert "--soc_version=Ascend910B3" in call["argv"]
    use_standins(chips="910B3,910B4")
    with pytest.raises(ConfigError, match=r"lists 910B3, 910B4; set chip.soc_version"):
        ais_bench.convert_settings(cfg)
    use_standins(npu_smi=False)
    with pytest.raises(ToolMissingError, match=r"npu-smi .* is not on PATH"):
        ais_bench.convert_settings(cfg)


def test_om_cache_key(use_standins) -> None:
    use_standins()

    def key(*overrides: str) -> str:
        settings = convert_stage.Settings.from_config(
            run_config("chip=ascend310p3", "model.weights=random", *overrides))
        return json.dumps(key_settings(settings), sort_keys=True)

    static = key("bs=4")
    assert key("bs=4") == static
    assert key("bs=8") != static  # a static OM is made per batch size
    assert key("bs=4", "chip.soc_version=Ascend310P1") != static
    assert key("bs=4", "chip.precision=fp32") != static
    assert key("bs=4", "+chip.atc_options.log=info") != static
    dynamic = ["chip.dynamic_batch_sizes=[1,4,8]", "bs=4"]
    assert key(*dynamic) != static
    assert key("chip.dynamic_batch_sizes=[1,4,8]", "bs=8") == key(*dynamic)  # converted once
    assert CANN_VERSION in static


def test_dynamic_batch_om(use_standins, alexnet_onnx: Path, tmp_path: Path) -> None:
    standins = use_standins()
    cfg = run_config("chip=ascend310p3", "bs=4", "chip.dynamic_batch_sizes=[1,4,8]",
                     "model.weights=random")
    om_path, _ = ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))
    (call,) = standins.calls("atc")
    assert "--input_shape=actual_input_1:-1,3,224,224" in call["argv"]
    assert "--dynamic_batch_size=1,4,8" in call["argv"]
    session = ais_bench.open_session(om_path, SessionSettings.from_config(cfg), 0)
    batch = np.random.default_rng(1).standard_normal((3, 3, 224, 224), dtype=np.float32)
    assert session.run(batch).shape == (3, 1000)
    assert session.run(batch[:1]).shape == (1, 1000)
    infers = standins.calls("ais_bench", "infer")
    assert [(c["mode"], c["shapes"][0][0]) for c in infers] == [("dymbatch", 4), ("dymbatch", 1)]
    with pytest.raises(ConfigError, match=r"bs=2 is not one of chip.dynamic_batch_sizes"):
        run_config("chip=ascend310p3", "bs=2", "chip.dynamic_batch_sizes=[1,4,8]")


@pytest.mark.parametrize("api", ["2023", "2024"])
def test_both_ais_bench_apis_pad_and_time(use_standins, alexnet_onnx: Path, tmp_path: Path,
                                          api: str) -> None:
    standins = use_standins(api=api)
    cfg = run_config("chip=ascend310p3", "bs=4", "model.weights=random")
    om_path, _ = ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))
    session = ais_bench.open_session(om_path, SessionSettings.from_config(cfg), 1)
    batch = np.random.default_rng(2).standard_normal((3, 3, 224, 224), dtype=np.float32)
    logits = session.run(batch)
    reference = ort.InferenceSession(str(alexnet_onnx), providers=["CPUExecutionProvider"])
    expected = reference.run(None, {"actual_input_1": batch})[0]
    assert logits.shape == (3, 1000)  # the padding's output is dropped
    assert np.abs(logits - expected).max() <= 1e-4
    (infer,) = standins.calls("ais_bench", "infer")
    assert infer["shapes"] == [[4, 3, 224, 224]] and infer["mode"] == "static"
    assert infer["device_id"] == 1
    times = session.own_compute_ms()
    assert len(times) == 1 and times[0] > 0
    assert session.describe()["api"] == ("InferSession.sumary()" if api == "2023"
                                         else "InferSession.summary()")
    with pytest.raises(ConfigError, match=r"a batch of 5 does not fit the OM model's batch"):
        session.run(np.zeros((5, 3, 224, 224), dtype=np.float32))


def test_exec_time_entries_of_both_releases() -> None:
    assert ais_bench.exec_ms(2.5) == 2.5
    assert ais_bench.exec_ms((100.0, 102.25)) == 2.25


def test_atc_failure_is_reported_with_its_code(use_standins, alexnet_onnx: Path,
                                               tmp_path: Path) -> None:
    use_standins()
    cfg = run_config("chip=ascend310p3", "model.weights=random", "model.input_name=image")
    with pytest.raises(ConversionError, match=r"atc failed \(exit 1\).*E10016.*atc.log"):
        ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))


def test_missing_cann_or_atc_says_which(use_standins, alexnet_onnx: Path,
                                        tmp_path: Path) -> None:
    cfg = run_config("chip=ascend310p3", "model.weights=random")
    use_standins(atc=False, cann=False)
    with pytest.raises(ToolMissingError, match=r"^CANN is not set up .*set_env.sh"):
        ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))
    use_standins(atc=False)
    with pytest.raises(ToolMissingError, match=r"^atc is not on PATH although CANN is set up"):
        ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))


@pytest.mark.parametrize(("present", "message"), [
    ({"ais_bench": False}, r"^ais_bench not installed .*aclruntime and ais_bench wheels"),
    ({"aclruntime": False}, r"^aclruntime not installed"),
    ({"ais_bench": False, "aclruntime": False}, r"^aclruntime and ais_bench not installed"),
])
def test_missing_ais_bench_says_which(use_standins, present: dict[str, bool],
                                      message: str) -> None:
    use_standins(**present)
    with pytest.raises(ToolMissingError, match=message):
        ais_bench.infer_session_class()


@pytest.mark.slow
def test_ascend_run_end_to_end(workspace: Workspace, standins: AscendStandins,
                               fast_benchmark: tuple[str, ...]) -> None:
    """atc -> OM -> ais_bench (the 2023 API; both are checked above) on two chips of a card:
    the logits are the exported model's, evaluate's top-k and each chip's ais_bench throughput
    land in MLflow with the NPU's environment."""
    standins.clear_calls()
    workspace.run("chip=ascend310p3", "chip.devices=[0,1]", "model=alexnet", "bs=4",
                  "dataset=synthetic", "dataset.synthetic.num_images=10", "model.weights=random",
                  *fast_benchmark, env=standins.env(api="2023"))
    (run,) = workspace.runs()
    assert run.info.status == "FINISHED"
    (call,) = standins.calls("atc")  # a static OM for bs=4
    assert "--input_shape=actual_input_1:4,3,224,224" in call["argv"]
    # infer (one chunk, so one device): 10 images at bs=4 are 3 batches of 4, the last padded
    assert [c["shapes"] for c in standins.calls("ais_bench", "infer")[:3]] == [
        [[4, 3, 224, 224]]] * 3
    expected = reference.onnx_cpu_logits(workspace, run)
    logits = reference.run_logits(workspace, run)
    assert logits.shape == (10, 1000)
    assert np.abs(logits - expected).max() <= 1e-4
    truth = reference.topk_percent(expected, reference.labels(workspace, run))
    assert [run.data.metrics[f"top{k}"] for k in range(1, 6)] == pytest.approx(truth)
    tags = run.data.tags
    assert tags["env.device_name"] == "Ascend310P3"
    assert tags["env.driver_version"] == "npu-smi 23.0.6"
    assert tags["env.runtime_version"].startswith(f"CANN {CANN_VERSION}, ais_bench 0.0.2-standin")
    # benchmark: one worker process per chip, each with its own session
    sessions = standins.calls("ais_bench", "InferSession")[1:]
    assert sorted(s["device_id"] for s in sessions) == [0, 1]
    assert len({s["pid"] for s in sessions}) == 2
    artifacts = Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, tracking_uri=workspace.tracking_uri))
    report = json.loads((artifacts / "stages" / "benchmark" / "benchmark.json").read_text())
    metrics = run.data.metrics
    for device in report["devices"]:
        assert device["session"]["api"] == "InferSession.sumary()"
        own = device["runtime_compute_ms"]
        assert len(own) == sum(len(repeat) for repeat in device["compute_ms"])
        assert metrics[f"ais_bench_throughput_fps_dev{device['device']}"] == pytest.approx(
            1000 * 4 / np.mean(own))
    assert metrics["ais_bench_throughput_fps"] == pytest.approx(
        metrics["ais_bench_throughput_fps_dev0"] + metrics["ais_bench_throughput_fps_dev1"])
    convert_info = json.loads((artifacts / "stages" / "convert" / "info.json").read_text())
    assert convert_info["atc_command"] == ["atc", *call["argv"]]


@pytest.mark.slow
def test_a_dynamic_batch_sweep_converts_once(workspace: Workspace, standins: AscendStandins,
                                             fast_benchmark: tuple[str, ...]) -> None:
    standins.clear_calls()
    workspace.run("-m", "bs=2,4", "chip=ascend310p3", "chip.dynamic_batch_sizes=[2,4]",
                  "stage=performance", "model.weights=random", *fast_benchmark,
                  env=standins.env())
    # the sweep's parent run holds no stages: its two jobs are the nested runs
    first, second = [r for r in workspace.runs() if "mlflow.parentRunId" in r.data.tags]
    assert (first.info.status, second.info.status) == ("FINISHED", "FINISHED")
    (atc,) = standins.calls("atc")
    assert "--dynamic_batch_size=2,4" in atc["argv"]
    assert (first.data.tags["cache.convert"], second.data.tags["cache.convert"]) == ("miss", "hit")
    batches = {c["shapes"][0][0] for c in standins.calls("ais_bench", "infer")}
    assert batches == {2, 4}
    assert {c["mode"] for c in standins.calls("ais_bench", "infer")} == {"dymbatch"}


@pytest.mark.slow
def test_missing_cann_fails_the_run_with_one_line(workspace: Workspace,
                                                  standins: AscendStandins) -> None:
    result = workspace.run("chip=ascend310p3", "stage=performance", "model.weights=random",
                           env=standins.env(atc=False, cann=False), check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("runner: error:")]
    assert "CANN is not set up" in line and "set_env.sh" in line
    (run,) = workspace.runs()
    assert run.info.status == "FAILED"
    assert "CANN is not set up" in run.data.tags["error"]
