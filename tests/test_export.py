"""export + convert: the ONNX graph has the guide's interface and matches PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from runner.backends import onnxruntime as ort_backend
from runner.data.transforms import load_cropped, normalize
from runner.models import build
from runner.stages.export import export_onnx, onnx_spec
from tests.conftest import SAMPLE_ROOT, run_config


@pytest.fixture(scope="module")
def alexnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    cfg = run_config("model.weights=random")
    net = build.build(cfg.model.arch, cfg.model.arch_kwargs, None, seed=0)
    out = tmp_path_factory.mktemp("export")
    with torch.no_grad():
        export_onnx(net, onnx_spec(cfg), out / "model.onnx")
    optimized, _ = ort_backend.convert(out / "model.onnx", out, ort_backend.convert_settings(cfg))
    return net, out / "model.onnx", optimized


def test_onnx_has_the_guides_interface(alexnet: tuple[torch.nn.Module, Path, Path]) -> None:
    model = onnx.load(str(alexnet[1]))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 11
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert graph_input.name == "actual_input_1" and graph_output.name == "output1"
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["-1", 3, 224, 224]


def _tensors(generated_images: Path) -> np.ndarray:
    recipe = run_config().model.preprocess
    real = sorted((SAMPLE_ROOT / "val").glob("*.JPEG"))[:12]
    paths = real or sorted((generated_images / "val").iterdir())[:12]
    return normalize(np.stack([load_cropped(p, recipe) for p in paths]), recipe)


def test_onnx_runtime_matches_pytorch_on_real_tensors(
    alexnet: tuple[torch.nn.Module, Path, Path], generated_images: Path
) -> None:
    net, _, optimized = alexnet
    batch = _tensors(generated_images)
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).numpy()
    session = ort_backend.open_session(optimized, run_config().chip, 0)
    for size in (1, 5, len(batch)):  # dynamic batch axis
        got = np.concatenate([session.run(batch[i:i + size]) for i in range(0, len(batch), size)])
        assert np.abs(got - expected).max() <= 1e-4
        assert (got.argmax(1) == expected.argmax(1)).all()
