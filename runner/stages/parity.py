"""parity: the PyTorch model and the converted model on the same evaluation tensors.

`infer` ran the converted model over the preprocessed dataset and `reference` ran the PyTorch
model (the checkpoint `export` read) on the very same normalized batches; parity compares the
logits image by image: largest and mean |difference|, the fraction of images whose top-1 class
agrees, and the top-1/top-5 accuracy of each. A breach of `parity.tolerance.<chip.precision>`
fails the run, naming the worst images.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.accuracy import topk_accuracy
from runner.artifacts import PreprocessedDataset, load_logits
from runner.cache import StageOutput, atomic_write_text
from runner.config import ParityTolerance, RunConfig
from runner.errors import ParityError

log = logging.getLogger("runner")

NEEDS = ("logits", "reference_logits", "dataset")
GIVES = ("parity_json",)
CODE = ("runner.accuracy", "runner.artifacts")
REPORT = "parity.json"


@dataclass(frozen=True)
class Settings:
    precision: str  # the chip's: picks the tolerance
    tolerance: ParityTolerance
    class_offset: int
    worst: int  # images named in the report and in the error message

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        precision = cfg.chip.precision
        return cls(precision, getattr(cfg.parity.tolerance, precision), cfg.model.class_offset,
                   cfg.parity.worst)


def compare(reference: np.ndarray, converted: np.ndarray, labels: np.ndarray, class_offset: int,
            names: list[str], worst: int) -> dict[str, Any]:
    """Per-image comparison of two (N, classes) logit arrays; the metrics and the worst images."""
    diff = np.abs(converted.astype(np.float64) - reference.astype(np.float64))
    per_image = diff.max(axis=1)
    ref_top1, conv_top1 = reference.argmax(axis=1), converted.argmax(axis=1)
    agree = ref_top1 == conv_top1
    ref_acc = topk_accuracy(reference, labels, class_offset)
    conv_acc = topk_accuracy(converted, labels, class_offset)
    metrics = {
        "parity_max_abs_diff": float(diff.max()),
        "parity_mean_abs_diff": float(diff.mean()),
        "parity_top1_agreement": float(agree.mean()),
        "parity_top1_delta": conv_acc[0] - ref_acc[0],
        "parity_top5_delta": conv_acc[4] - ref_acc[4],
        "parity_reference_top1": ref_acc[0],
        "parity_reference_top5": ref_acc[4],
    }
    # disagreeing images first, then the largest difference (NaN counts as the largest)
    order = np.lexsort((-np.nan_to_num(per_image, nan=np.inf), agree))[:worst]
    worst_images = [
        {"image": names[i], "max_abs_diff": float(per_image[i]),
         "reference_top1": int(ref_top1[i]), "converted_top1": int(conv_top1[i])}
        for i in order
    ]
    return {"metrics": metrics, "worst_images": worst_images,
            "disagreeing_images": int((~agree).sum()), "num_images": len(names)}


def breaches(metrics: dict[str, float], tolerance: ParityTolerance) -> list[str]:
    """What exceeds the tolerance; written as `not <=` so that a NaN is a breach too."""
    found = []
    if not metrics["parity_max_abs_diff"] <= tolerance.max_abs_diff:
        found.append(f"max_abs_diff {metrics['parity_max_abs_diff']:.4g} > "
                     f"{tolerance.max_abs_diff:g}")
    if not metrics["parity_top1_agreement"] >= tolerance.min_top1_agreement:
        found.append(f"top1_agreement {metrics['parity_top1_agreement']:.4f} < "
                     f"{tolerance.min_top1_agreement:g}")
    for k in (1, 5):
        delta = metrics[f"parity_top{k}_delta"]
        if not abs(delta) <= tolerance.max_topk_delta:
            found.append(f"top{k} delta {delta:+.3f} points, beyond ±{tolerance.max_topk_delta:g}")
    return found


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    converted = load_logits(inputs["logits"])
    reference = load_logits(inputs["reference_logits"])
    data = PreprocessedDataset(inputs["dataset"])
    if reference.shape != converted.shape:
        raise ParityError(
            f"parity: PyTorch gives logits of shape {reference.shape}, the converted model "
            f"{converted.shape}: the converted model is not the exported one"
        )
    precision = settings.precision
    tolerance = settings.tolerance
    result = compare(reference, converted, data.labels, settings.class_offset, data.names,
                     settings.worst)
    found = breaches(result["metrics"], tolerance)
    report = {
        **result,
        "precision": precision,
        "tolerance": asdict(tolerance),
        "passed": not found,
        "breaches": found,
        "method": "PyTorch (eval, no_grad, batch 16) and the converted model (infer stage) on the "
                  "same normalized uint8 crops; differences in float64",
    }
    atomic_write_text(out_dir / REPORT, json.dumps(report, indent=2))
    metrics = result["metrics"]
    log.info("parity (%s): max_abs_diff %.3g, top-1 agreement %.4f, top-1 delta %+.3f, "
             "top-5 delta %+.3f points: %s", precision, metrics["parity_max_abs_diff"],
             metrics["parity_top1_agreement"], metrics["parity_top1_delta"],
             metrics["parity_top5_delta"], "BREACH" if found else "within tolerance")
    if found:
        worst = ", ".join(
            f"{w['image']} (|diff| {w['max_abs_diff']:.3g}, top-1 {w['reference_top1']} vs "
            f"{w['converted_top1']})" for w in result["worst_images"]
        )
        raise ParityError(
            f"parity ({precision}): the converted model differs from PyTorch beyond "
            f"parity.tolerance.{precision}: {'; '.join(found)}; worst images: {worst}; "
            f"report {out_dir / REPORT}"
        )
    return StageOutput(
        artifacts={"parity_json": REPORT},
        metrics=result["metrics"],
        info={"precision": precision, "tolerance": asdict(tolerance),
              "disagreeing_images": result["disagreeing_images"]},
    )
