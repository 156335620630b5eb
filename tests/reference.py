"""Reference results computed apart from the runner's stages: ONNX Runtime on the CPU over the
exact crops and ONNX file a run used (read from its cache entries), top-k with torch, and MLPerf's
OpenCV preprocessing written out from its documented behaviour."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

from runner.artifacts import PreprocessedDataset, load_logits
from runner.config import PreprocessRecipe
from runner.data.transforms import normalize
from tests.conftest import Workspace, run_config


def entry(space: Workspace, stage: str, run) -> Path:
    return space.entry(stage, run)


def run_logits(space: Workspace, run) -> np.ndarray:
    return load_logits(entry(space, "infer", run) / "logits.json")


def labels(space: Workspace, run) -> np.ndarray:
    return PreprocessedDataset(entry(space, "preprocess", run)).labels


def onnx_cpu_logits(space: Workspace, run, recipe: PreprocessRecipe | None = None) -> np.ndarray:
    """The exported ONNX model on ONNX Runtime's CPU provider, one image at a time, on tensors
    normalized with `recipe` (default: the default model's)."""
    data = PreprocessedDataset(entry(space, "preprocess", run))
    recipe = recipe or run_config().model.preprocess
    session = ort.InferenceSession(str(entry(space, "export", run) / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: normalize(data.pixels(i, i + 1), recipe)})[0]
                           for i in range(len(data))])


def topk_percent(logits: np.ndarray, truth: np.ndarray) -> list[float]:
    top5 = torch.from_numpy(logits).topk(5, dim=1).indices
    hits = top5 == torch.from_numpy(truth)[:, None]
    return [100.0 * hits[:, :k].any(1).double().mean().item() for k in range(1, 6)]


# --- MLPerf Inference's ResNet50 preprocessing ------------------------------------------------
# mlcommons/inference, vision/classification_and_detection/python/dataset.py, read at commit
# 073ef8444abf42dde375d7669ded638e8fd2e981: the loader reads each image with cv2.imread (BGR,
# IMREAD_COLOR) and `pre_process_vgg(img, dims=(224, 224, 3), need_transpose=True)` (the ONNX
# backend's layout) does, in this order:
#   1. cv2.cvtColor BGR -> RGB on the whole image;
#   2. `resize_with_aspectratio(scale=87.5, INTER_AREA)`: target int(100 * 224 / 87.5) = 256 for
#      both sides; if height > width the width becomes 256 and the height int(256 * h / w), else
#      the height 256 and the width int(256 * w / h); one cv2.resize on the uint8 image;
#   3. `center_crop`: rows int((h - 224) / 2) to int((h + 224) / 2), same for columns;
#   4. float32 array, minus float32 means (123.68, 116.78, 103.94), no scaling, no std;
#   5. HWC -> CHW.
# Written here from that description, independently of runner/data/transforms.py.


def mlperf_resize_with_aspectratio(img: np.ndarray, out_height: int, out_width: int,
                                   scale: float = 87.5,
                                   inter_pol: int = cv2.INTER_LINEAR) -> np.ndarray:
    height, width = img.shape[:2]
    target_h, target_w = int(100.0 * out_height / scale), int(100.0 * out_width / scale)
    if height > width:
        size = (target_w, int(target_h * height / width))  # cv2 sizes are (width, height)
    else:
        size = (int(target_w * width / height), target_h)
    return cv2.resize(img, size, interpolation=inter_pol)


def mlperf_center_crop(img: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    height, width = img.shape[:2]
    top, bottom = int((height - out_height) / 2), int((height + out_height) / 2)
    left, right = int((width - out_width) / 2), int((width + out_width) / 2)
    return img[top:bottom, left:right]


def mlperf_resnet50_crop(path: Path) -> np.ndarray:
    """Steps 1-3 on cv2.imread's image: the uint8 RGB (224, 224, 3) crop before the float part."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cv2.imread cannot read {path}"
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    resized = mlperf_resize_with_aspectratio(rgb, 224, 224, inter_pol=cv2.INTER_AREA)
    return mlperf_center_crop(resized, 224, 224)


def mlperf_resnet50(path: Path) -> np.ndarray:
    """All five steps: the float32 (3, 224, 224) tensor MLPerf feeds its ONNX ResNet50."""
    img = np.asarray(mlperf_resnet50_crop(path), dtype=np.float32)
    img -= np.array([123.68, 116.78, 103.94], dtype=np.float32)
    return img.transpose(2, 0, 1)
