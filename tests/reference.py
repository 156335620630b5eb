"""Reference results computed apart from the runner's stages: ONNX Runtime on the CPU over the
exact crops and ONNX file a run used (read from its cache entries), and top-k with torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from runner.artifacts import PreprocessedDataset, load_logits
from runner.data.transforms import normalize
from tests.conftest import Workspace, run_config


def entry(space: Workspace, stage: str, run) -> Path:
    return space.cache / stage / run.data.tags[f"cache_key.{stage}"]


def run_logits(space: Workspace, run) -> np.ndarray:
    return load_logits(entry(space, "infer", run) / "logits.json")


def labels(space: Workspace, run) -> np.ndarray:
    return PreprocessedDataset(entry(space, "preprocess", run)).labels


def onnx_cpu_logits(space: Workspace, run) -> np.ndarray:
    """The exported ONNX model on ONNX Runtime's CPU provider, one image at a time."""
    data = PreprocessedDataset(entry(space, "preprocess", run))
    recipe = run_config().model.preprocess
    session = ort.InferenceSession(str(entry(space, "export", run) / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: normalize(data.pixels(i, i + 1), recipe)})[0]
                           for i in range(len(data))])


def topk_percent(logits: np.ndarray, truth: np.ndarray) -> list[float]:
    top5 = torch.from_numpy(logits).topk(5, dim=1).indices
    hits = top5 == torch.from_numpy(truth)[:, None]
    return [100.0 * hits[:, :k].any(1).double().mean().item() for k in range(1, 6)]
