"""evaluate: top-1..top-5 accuracy of the logits against the labels, also as the guides' JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from runner.cache import StageOutput, atomic_write_text
from runner.config import RunConfig
from runner.stages.infer import load_logits
from runner.stages.preprocess import PreprocessedDataset

NEEDS = ("logits", "dataset")
GIVES = ("metrics_json",)
CODE: tuple[str, ...] = ()
TOPK = 5
METRICS_FILE = "metrics.json"


def key_config(cfg: RunConfig) -> dict[str, Any]:
    return {"class_offset": cfg.model.class_offset, "num_classes": cfg.model.num_classes}


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, class_offset: int,
                  k: int = TOPK) -> list[float]:
    """Percent of images whose class (label + offset) is among the k highest logits, k=1..k."""
    ranked = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    hits = ranked == (labels + class_offset)[:, None]
    first_hit = np.cumsum(hits, axis=1) > 0
    return [float(100.0 * first_hit[:, i].mean()) for i in range(k)]


def guide_json(accuracies: list[float], num_images: int, num_classes: int) -> dict[str, Any]:
    """The guides' `imagenet_acc_eval.py` result file, values formatted the way it formats them."""
    values = [
        {"key": "Number of images", "value": str(num_images)},
        {"key": "Number of classes", "value": str(num_classes)},
    ]
    values += [
        {"key": f"Top{i + 1} accuracy", "value": f"{round(acc, 2)}%"}
        for i, acc in enumerate(accuracies)
    ]
    return {"title": "Overall statistical evaluation", "value": values}


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    logits = load_logits(inputs["logits"])
    labels = PreprocessedDataset(inputs["dataset"]).labels
    accuracies = topk_accuracy(logits, labels, cfg.model.class_offset)
    # the guides' script reports the length of an output row: 1001 for InceptionV4
    result = guide_json(accuracies, len(labels), logits.shape[1])
    atomic_write_text(out_dir / METRICS_FILE, json.dumps(result, indent=2))
    return StageOutput(
        artifacts={"metrics_json": METRICS_FILE},
        metrics={f"top{i + 1}": acc for i, acc in enumerate(accuracies)},
        info={"num_images": len(labels)},
    )
