"""`python -m runner model=<name> debug=smoke` end to end, offline, for every shipped model
preset (conf/model/*.yaml): none may ship failing its own smoke run (issue 31: resnet50_mlperf's
large random-weight logits failed an absolute-only parity tolerance). InceptionV4 (1001 classes,
scored as label + 1) and a torchvision model defined by its YAML file alone are checked in
detail."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from runner.artifacts import PreprocessedDataset, load_logits
from runner.config import PROJECT_ROOT
from tests.conftest import Workspace

pytestmark = pytest.mark.slow

PRESETS = sorted(path.stem for path in (PROJECT_ROOT / "conf" / "model").glob("*.yaml"))
# model: (classes, class offset, ONNX input and output names, crop)
DETAILED = {
    "inceptionv4": (1001, 1, ("image", "class"), 299),
    "resnet50": (1000, 0, ("input", "output"), 224),
}


def test_the_presets_are_found() -> None:
    assert {"alexnet", "inceptionv4", "resnet50", "resnet50_mlperf"} <= set(PRESETS)


@pytest.mark.parametrize("model", PRESETS)
def test_every_model_preset_passes_its_smoke_run(workspace: Workspace, model: str) -> None:
    """Generated images, seeded random weights, every stage: exit 0 (Workspace.run checks)."""
    workspace.run(f"model={model}", "debug=smoke")
    (run,) = workspace.runs()
    assert run.info.status == "FINISHED" and run.data.tags["model"] == model
    assert run.data.metrics["parity_top1_agreement"] == 1.0
    assert run.data.metrics["parity_bound_used"] <= 1.0
    assert run.data.metrics["throughput_fps"] > 0
    if model not in DETAILED:
        return
    classes, offset, io, crop = DETAILED[model]

    def entry(stage: str):
        return workspace.entry(stage, run)

    graph = onnx.load(str(entry("export") / "model.onnx")).graph
    assert (graph.input[0].name, graph.output[0].name) == io
    data = PreprocessedDataset(entry("preprocess"))
    assert data.pixels(0, 1).shape == (1, crop, crop, 3)
    logits = torch.from_numpy(load_logits(entry("infer") / "logits.json"))
    assert logits.shape == (8, classes)
    labels = torch.from_numpy(data.labels) + offset
    top5 = logits.topk(5, dim=1).indices
    for k in (1, 5):
        expected = 100.0 * (top5[:, :k] == labels[:, None]).any(1).double().mean().item()
        assert run.data.metrics[f"top{k}"] == pytest.approx(expected, abs=1e-9)
    guide = json.loads((entry("evaluate") / "metrics.json").read_text())
    assert guide["value"][1] == {"key": "Number of classes", "value": str(classes)}
    assert run.data.metrics["parity_max_abs_diff"] <= 1e-3
