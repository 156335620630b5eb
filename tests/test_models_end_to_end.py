"""`python -m runner model=<name>` end to end, offline, for models beyond AlexNet: InceptionV4
(1001 classes, scored as label + 1) and a torchvision model defined by its YAML file alone."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from runner.artifacts import PreprocessedDataset, load_logits
from tests.conftest import Workspace

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("model", "classes", "offset", "io", "crop"), [
    ("inceptionv4", 1001, 1, ("image", "class"), 299),
    ("resnet50", 1000, 0, ("input", "output"), 224),
])
def test_model_runs_every_stage(workspace: Workspace, fast_benchmark: tuple[str, ...],
                                model: str, classes: int, offset: int, io: tuple[str, str],
                                crop: int) -> None:
    workspace.run(f"model={model}", "bs=4", "dataset=synthetic",
                  "dataset.synthetic.num_images=8", "model.weights=random", *fast_benchmark)
    (run,) = workspace.runs()
    assert run.info.status == "FINISHED" and run.data.tags["model"] == model

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
    assert run.data.metrics["parity_top1_agreement"] == 1.0
    assert run.data.metrics["parity_max_abs_diff"] <= 1e-3
    assert run.data.metrics["throughput_fps"] > 0
