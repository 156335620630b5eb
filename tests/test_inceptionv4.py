"""InceptionV4: the official checkpoint's key layout loads unchanged, the export has the guide's
interface (image/class, opset 11, dynamic batch, constant-kernel final pool) and ONNX Runtime
matches PyTorch on real preprocessed images."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from runner.backends import onnxruntime as ort_backend
from runner.config import RunConfig
from runner.data.transforms import load_cropped, normalize
from runner.errors import WeightsError
from runner.models import build
from runner.models.inceptionv4 import InceptionV4
from runner.stages.export import export_onnx, onnx_spec
from tests.conftest import SAMPLE_ROOT, run_config

# Shapes of the official inceptionv4-8e4777a0.pth at points spread over the network (Cadene's
# layout: stem, Mixed_3a/4a/5a, Inception_A/B/C, Reduction_A/B, the 1001-class head).
OFFICIAL_SHAPES = {
    "features.0.conv.weight": (32, 3, 3, 3),
    "features.0.bn.running_var": (32,),
    "features.2.conv.weight": (64, 32, 3, 3),
    "features.3.conv.conv.weight": (96, 64, 3, 3),
    "features.4.branch1.1.conv.weight": (64, 64, 1, 7),
    "features.4.branch1.3.conv.weight": (96, 64, 3, 3),
    "features.5.conv.conv.weight": (192, 192, 3, 3),
    "features.6.branch0.conv.weight": (96, 384, 1, 1),
    "features.9.branch3.1.conv.weight": (96, 384, 1, 1),
    "features.10.branch1.2.conv.weight": (256, 224, 3, 3),
    "features.11.branch2.4.conv.weight": (256, 224, 1, 7),
    "features.17.branch3.1.bn.running_mean": (128,),
    "features.18.branch1.3.conv.weight": (320, 320, 3, 3),
    "features.19.branch1_1a.conv.weight": (256, 384, 1, 3),
    "features.21.branch2_3b.conv.weight": (256, 512, 3, 1),
    "last_linear.weight": (1001, 1536),
    "last_linear.bias": (1001,),
}
KEY = re.compile(r"^features\.\d+\.[\w.]*(conv\.weight|bn\.(weight|bias|running_mean|running_var))$"
                 r"|^last_linear\.(weight|bias)$")
NUM_CONVS = 149


def official_layout_checkpoint(path: Path, seed: int = 7) -> OrderedDict[str, torch.Tensor]:
    """A state dict as the 2017 file holds it: no `num_batches_tracked`, plausible BN stats."""
    generator = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, tensor in InceptionV4().state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith(("running_var", "bn.weight")):
            value = 0.5 + torch.rand(tensor.shape, generator=generator)
        elif key.endswith("conv.weight"):
            fan_in = tensor[0].numel()
            value = torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5
        else:
            value = 0.05 * torch.randn(tensor.shape, generator=generator)
        state[key] = value
    torch.save(state, path)
    return state


def test_state_dict_has_the_official_layout() -> None:
    keys = {k: v.shape for k, v in InceptionV4().state_dict().items()
            if not k.endswith("num_batches_tracked")}
    assert all(KEY.match(k) for k in keys), [k for k in keys if not KEY.match(k)][:5]
    assert sum(k.endswith("conv.weight") for k in keys) == NUM_CONVS
    assert len(keys) == NUM_CONVS * 5 + 2
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(keys[key]) == shape, key
    features = InceptionV4().features
    assert [type(m).__name__ for m in features] == (
        ["BasicConv2d"] * 3 + ["Mixed_3a", "Mixed_4a", "Mixed_5a"] + ["Inception_A"] * 4
        + ["Reduction_A"] + ["Inception_B"] * 7 + ["Reduction_B"] + ["Inception_C"] * 3)
    bn = features[0].bn
    assert bn.eps == 0.001 and features[0].conv.bias is None


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, torch.nn.Module, Path]:
    folder = tmp_path_factory.mktemp("inceptionv4")
    state = official_layout_checkpoint(folder / "inceptionv4-official-layout.pth")
    cfg = run_config("model=inceptionv4", f"model.weights={folder}/inceptionv4-official-layout.pth")
    net = build.build(cfg.model.arch, cfg.model.arch_kwargs,
                      folder / "inceptionv4-official-layout.pth", seed=0)
    loaded_state = net.state_dict()
    for key, value in state.items():  # every tensor arrives unchanged
        assert torch.equal(loaded_state[key], value), key
    return cfg, net, folder


def test_a_checkpoint_missing_a_key_is_refused(tmp_path: Path) -> None:
    state = official_layout_checkpoint(tmp_path / "full.pth")
    del state["features.21.branch2_3b.conv.weight"]
    torch.save(state, tmp_path / "short.pth")
    cfg = run_config("model=inceptionv4")
    with pytest.raises(WeightsError, match=r"1 missing keys \(features\.21\.branch2_3b"):
        build.build(cfg.model.arch, cfg.model.arch_kwargs, tmp_path / "short.pth", seed=0)


def _real_batch(cfg: RunConfig, count: int) -> np.ndarray:
    paths = sorted((SAMPLE_ROOT / "val").glob("*.JPEG"))[:count]
    if not paths:  # no sample: smooth random pixels stand in for images
        rng = np.random.default_rng(0)
        return rng.uniform(-1, 1, size=(count, 3, 299, 299)).astype(np.float32)
    recipe = cfg.model.preprocess
    return normalize(np.stack([load_cropped(p, recipe) for p in paths]), recipe)


def test_export_has_the_guides_interface_and_onnx_runtime_matches_pytorch(
    loaded: tuple[RunConfig, torch.nn.Module, Path]
) -> None:
    cfg, net, folder = loaded
    target = folder / "model.onnx"
    with torch.no_grad():
        export_onnx(net, onnx_spec(cfg), target)
    model = onnx.load(str(target))
    assert model.opset_import[0].version == 11
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert (graph_input.name, graph_output.name) == ("image", "class")
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["-1", 3, 299, 299]
    # the guide's patch: the final pool is an AveragePool with a constant 8x8 kernel, and no
    # shape arithmetic (Shape ops) is left in the graph
    pools = [n for n in model.graph.node if n.op_type == "AveragePool"]
    kernels = [list(a.ints) for n in pools for a in n.attribute if a.name == "kernel_shape"]
    assert kernels.count([8, 8]) == 1 and kernels.count([3, 3]) == len(pools) - 1
    assert not [n for n in model.graph.node if n.op_type in ("Shape", "GlobalAveragePool")]

    batch = _real_batch(cfg, 5)
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).numpy()
    assert expected.shape == (5, 1001)
    assert float(expected.std(axis=0).mean()) > 1e-3  # the images give different logits
    optimized, _ = ort_backend.convert(target, folder, ort_backend.convert_settings(cfg))
    session = ort_backend.open_session(optimized, cfg.chip, 0)
    for size in (1, 2, 5):  # the dynamic batch axis
        got = np.concatenate([session.run(batch[i:i + size]) for i in range(0, 5, size)])
        assert np.abs(got - expected).max() <= 1e-3
        assert (got.argmax(1) == expected.argmax(1)).all()
