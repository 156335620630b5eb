"""model.preprocess.on_device=true on the CPU: the model takes the cached uint8 crops and
normalizes them as its first nodes (runner/models/on_device.py); every stage runs and gives the
float route's logits and top-k. The Ascend route (AIPP) is tests/test_aipp.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from torch import nn

from runner.artifacts import PreprocessedDataset, load_logits
from runner.config import Normalization
from runner.data.transforms import normalize
from runner.errors import ConfigError
from runner.models import build, on_device
from runner.stages.export import OnnxSpec, export_onnx
from tests.conftest import SAMPLE_ROOT, Workspace, needs_sample, run_config

SIZE = 32


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10)).eval()


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _crops(count: int = 6) -> np.ndarray:
    # every value 0..255 appears, in every channel
    rng = np.random.default_rng(4)
    crops = rng.integers(0, 256, size=(count, SIZE, SIZE, 3), dtype=np.uint8)
    crops[0].reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]
    return crops


RECIPES = {
    "torchvision (RGB, /255, NCHW)": Normalization(True, (0.485, 0.456, 0.406),
                                                   (0.229, 0.224, 0.225), "RGB", "NCHW"),
    "MLPerf (BGR, 0..255, mean only)": Normalization(False, (123.68, 116.78, 103.94),
                                                     (1.0, 1.0, 1.0), "BGR", "NCHW"),
    "channels last (NHWC)": Normalization(True, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), "RGB",
                                          "NHWC"),
}


@pytest.mark.parametrize("recipe", list(RECIPES.values()), ids=list(RECIPES))
def test_the_uint8_model_gives_the_float_routes_logits_bit_for_bit(
        tmp_path: Path, recipe: Normalization) -> None:
    net = build.for_input_layout(_tiny_net(), recipe.layout)
    float_onnx, uint8_onnx = tmp_path / "float.onnx", tmp_path / "uint8.onnx"
    export_onnx(net, OnnxSpec("input", "output", SIZE, 11, recipe.layout), float_onnx)
    on_device_recipe = dataclasses.replace(recipe, on_device=True)
    export_onnx(net, OnnxSpec("input", "output", SIZE, 11, recipe.layout, on_device_recipe),
                uint8_onnx)
    model = onnx.load(str(uint8_onnx))
    (graph_input,) = model.graph.input
    assert graph_input.type.tensor_type.elem_type == TensorProto.UINT8
    dims = [d.dim_value or d.dim_param for d in graph_input.type.tensor_type.shape.dim]
    assert dims[1:] == [SIZE, SIZE, 3]
    # the normalization comes first: the uint8 transpose (NCHW models), the cast, the arithmetic
    ops = [node.op_type for node in model.graph.node]
    assert ops.index("Cast") < ops.index("Conv") and ops.index("Cast") <= 1
    assert ops[0] == ("Transpose" if recipe.layout == "NCHW" else "Cast")
    crops = _crops()
    fed = normalize(crops, on_device_recipe)
    assert fed.dtype == np.uint8 and fed.nbytes * 4 == normalize(crops, recipe).nbytes
    got = _session(uint8_onnx).run(None, {"input": fed})[0]
    expected = _session(float_onnx).run(None, {"input": normalize(crops, recipe)})[0]
    np.testing.assert_array_equal(got, expected)
    # and the wrapped PyTorch module agrees with the unwrapped one on host-normalized tensors
    with torch.no_grad():
        wrapped = on_device.wrap(net, on_device_recipe)(torch.from_numpy(crops)).numpy()
        plain = net(torch.from_numpy(normalize(crops, recipe))).numpy()
    np.testing.assert_array_equal(wrapped, plain)


def test_only_runtimes_without_aipp_export_the_normalization() -> None:
    assert on_device.in_model(run_config("model=alexnet")) is None
    cpu = on_device.in_model(run_config("model=alexnet", "model.preprocess.on_device=true"))
    assert cpu is not None and cpu.on_device and cpu.mean == (0.485, 0.456, 0.406)
    torch_cpu = run_config("model=alexnet", "chip=torch_cpu", "model.preprocess.on_device=true")
    assert on_device.in_model(torch_cpu) == cpu
    # Ascend: the ONNX keeps its float input; AIPP normalizes (tests/test_aipp.py)
    ascend = run_config("model=alexnet", "chip=ascend310p3", "model.preprocess.on_device=true")
    assert on_device.in_model(ascend) is None


@pytest.mark.parametrize(("overrides", "named"), [
    (("chip.precision=int8",), "chip.precision=int8"),
    (("chip=ascend910b", "chip.precision=fp32"), "chip.precision=fp32"),
    (("chip=ascend310p3", "model.preprocess.layout=NHWC"), "model.preprocess.layout=NHWC"),
])
def test_what_on_device_cannot_do_is_refused_naming_the_key(overrides: tuple[str, ...],
                                                            named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        run_config("model=alexnet", "model.preprocess.on_device=true", *overrides)
    message = str(refused.value)
    assert "model.preprocess.on_device=true" in message and named in message
    assert "\n" not in message


def _routes(workspace: Workspace, *common: str) -> tuple:
    workspace.run(*common)
    workspace.run(*common, "model.preprocess.on_device=true")
    runs = workspace.runs()
    assert [r.data.tags["preprocess.route"] for r in runs] == ["host_float", "on_device"]
    assert all(r.info.status == "FINISHED" for r in runs)
    return runs[0], runs[1]


def _check_routes_agree(workspace: Workspace, host_float, on_device_run, images: int) -> None:
    for k in range(1, 6):
        assert on_device_run.data.metrics[f"top{k}"] == host_float.data.metrics[f"top{k}"]
    assert on_device_run.data.params["model.preprocess.on_device"] == "True"
    float_logits = load_logits(workspace.entry("infer", host_float) / "logits.json")
    device_logits = load_logits(workspace.entry("infer", on_device_run) / "logits.json")
    assert float_logits.shape[0] == images
    np.testing.assert_array_equal(device_logits, float_logits)
    # parity: the uint8-input model against the float PyTorch reference (the same entry)
    assert on_device_run.data.metrics["parity_top1_agreement"] == 1.0
    assert (workspace.entry("reference", on_device_run)
            == workspace.entry("reference", host_float))
    # the host stops at the uint8 crop: the preprocess entry is the float route's, a quarter of
    # float32's bytes
    crops = workspace.entry("preprocess", on_device_run)
    assert crops == workspace.entry("preprocess", host_float)
    data = PreprocessedDataset(crops)
    pixels = data.read(0, len(data))
    assert pixels.dtype == np.uint8
    assert pixels.nbytes * 4 == normalize(pixels[:1], _float_recipe()).nbytes * len(data)
    # a model of its own, taking uint8 NHWC
    model = onnx.load(str(workspace.entry("export", on_device_run) / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert workspace.entry("export", on_device_run) != workspace.entry("export", host_float)
    assert {"e2e_fps", "throughput_fps"} <= set(on_device_run.data.metrics)


def _float_recipe() -> Normalization:
    return run_config("model=alexnet").model.preprocess.normalization()


@pytest.mark.slow
def test_every_stage_on_device_gives_the_float_routes_top_k_on_generated_images(
        workspace: Workspace, fast_benchmark: tuple[str, ...]) -> None:
    host_float, on_device_run = _routes(
        workspace, "model=alexnet", "bs=4", "dataset=synthetic",
        "dataset.synthetic.num_images=12", "dataset.synthetic.seed=33", "model.weights=random",
        *fast_benchmark)
    _check_routes_agree(workspace, host_float, on_device_run, images=12)


@pytest.mark.slow
@needs_sample
def test_every_stage_on_device_gives_the_float_routes_top_k_on_the_sample(
        workspace: Workspace, fast_benchmark: tuple[str, ...]) -> None:
    host_float, on_device_run = _routes(
        workspace, "model=alexnet", "bs=16", "dataset=imagenet_sample",
        f"dataset.root={SAMPLE_ROOT}", "model.weights=random", *fast_benchmark)
    _check_routes_agree(workspace, host_float, on_device_run, images=100)


@pytest.mark.slow
def test_pytorch_on_device_matches_its_float_route(workspace: Workspace) -> None:
    common = ("model=alexnet", "chip=torch_cpu", "bs=4", "dataset=synthetic",
              "dataset.synthetic.num_images=8", "dataset.synthetic.seed=34",
              "model.weights=random", "stage.stages=[export,convert,preprocess,infer,reference,"
              "parity,evaluate]")
    host_float, on_device_run = _routes(workspace, *common)
    float_logits = load_logits(workspace.entry("infer", host_float) / "logits.json")
    device_logits = load_logits(workspace.entry("infer", on_device_run) / "logits.json")
    np.testing.assert_array_equal(device_logits, float_logits)
    saved = torch.load(workspace.entry("convert", on_device_run) / "model.pt", weights_only=True)
    assert saved["in_model"]["on_device"] is True


def test_a_sweep_of_both_routes_reports_them_as_two_rows() -> None:
    from types import SimpleNamespace

    from runner import report

    def run(number: int, route: str, top1: float) -> SimpleNamespace:
        tags = {"model": "alexnet", "chip": "cpu", "dataset": "synthetic (8 images)",
                "sweep.job_num": str(number), report.ROUTE_TAG: route}
        return SimpleNamespace(
            data=SimpleNamespace(tags=tags, params={"bs": "4", "chip.precision": "fp32"},
                                 metrics={"top1": top1, "top5": top1, "throughput_fps": 10.0}),
            info=SimpleNamespace(run_id=f"run{number}", status="FINISHED"))

    jobs = report.build_jobs([run(0, "host_float", 12.5), run(1, "on_device", 25.0)], None)
    assert [job.chip for job in jobs] == ["cpu", "cpu on-device"]
    table = report.sweep_report(jobs, "routes")
    assert "| alexnet / cpu " in table and "| alexnet / cpu on-device " in table
