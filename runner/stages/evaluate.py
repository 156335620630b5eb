"""evaluate: top-1..top-5 accuracy of the logits against the labels, also as the guides' JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from runner.cache import StageOutput, atomic_write_text
from runner.config import RunConfig
from runner.errors import RunnerError
from runner.stages.infer import iter_logits
from runner.stages.preprocess import PreprocessedDataset

NEEDS = ("logits", "dataset")
GIVES = ("metrics_json",)
CODE: tuple[str, ...] = ()
TOPK = 5
METRICS_FILE = "metrics.json"


def key_config(cfg: RunConfig) -> dict[str, Any]:
    return {"class_offset": cfg.model.class_offset, "num_classes": cfg.model.num_classes}


def topk_hits(logits: np.ndarray, labels: np.ndarray, class_offset: int,
              k: int = TOPK) -> np.ndarray:
    """How many images have their class (label + offset) among the k highest logits, k=1..k."""
    ranked = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    hits = ranked == (labels + class_offset)[:, None]
    return (np.cumsum(hits, axis=1) > 0).sum(axis=0)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, class_offset: int,
                  k: int = TOPK) -> list[float]:
    """Percent of images whose class (label + offset) is among the k highest logits, k=1..k."""
    return [float(100.0 * (h / len(labels))) for h in topk_hits(logits, labels, class_offset, k)]


def streamed_topk_accuracy(chunks: Iterator[np.ndarray], labels: np.ndarray,
                           class_offset: int, k: int = TOPK) -> list[float]:
    """`topk_accuracy` over logits that arrive in consecutive chunks: memory of one chunk."""
    hits = np.zeros(k, dtype=np.int64)
    seen = 0
    for logits in chunks:
        if seen + len(logits) > len(labels):
            seen += len(logits)
            break
        hits += topk_hits(logits, labels[seen : seen + len(logits)], class_offset, k)
        seen += len(logits)
    if seen != len(labels):
        raise RunnerError(f"the logits cover {'at least ' if seen > len(labels) else ''}{seen} "
                          f"images, the dataset has {len(labels)}: "
                          "recompute with cache.force=[infer]")
    return [float(100.0 * (h / seen)) for h in hits]


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
    labels = PreprocessedDataset(inputs["dataset"]).labels
    accuracies = streamed_topk_accuracy(iter_logits(inputs["logits"]), labels,
                                        cfg.model.class_offset)
    # the guides' script reports the length of an output row: 1001 for InceptionV4
    result = guide_json(accuracies, len(labels), cfg.model.num_classes)
    atomic_write_text(out_dir / METRICS_FILE, json.dumps(result, indent=2))
    return StageOutput(
        artifacts={"metrics_json": METRICS_FILE},
        metrics={f"top{i + 1}": acc for i, acc in enumerate(accuracies)},
        info={"num_images": len(labels)},
    )
