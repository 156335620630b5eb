"""parity: the PyTorch model and the converted model on the same evaluation tensors.

`infer` ran the converted model over the preprocessed dataset and `reference` ran the PyTorch
model (the checkpoint `export` read) on the very same normalized batches; parity compares the
logits image by image: largest and mean |difference|, the largest difference relative to its
image's logit scale (max |reference logit|), the fraction of images whose top-1 class agrees, and
the top-1/top-5 accuracy of each. A breach of `parity.tolerance.<chip.precision>` (an absolute
floor plus `rtol` of the image's logit scale, see ParityTolerance) fails the run, naming which
bound and the worst images.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.accuracy import TOPK, topk_hits
from runner.artifacts import LogitsRows, PreprocessedDataset, iter_logits, logits_indices
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


class Tally:
    """The comparison, accumulated block by block: memory of one block whatever the dataset."""

    def __init__(self, class_offset: int, worst: int) -> None:
        self.class_offset, self.worst = class_offset, worst
        self.images = 0
        self.max_abs = 0.0
        # per image, for the scale-aware bound (two floats an image: 0.4 MB for 50,000)
        self.image_max_abs: list[np.ndarray] = []
        self.image_scale: list[np.ndarray] = []
        self.image_names: list[str] = []
        self.sum_abs = 0.0
        self.elements = 0
        self.agree = 0
        self.reference_hits = np.zeros(TOPK, dtype=np.int64)
        self.converted_hits = np.zeros(TOPK, dtype=np.int64)
        self.candidates: list[tuple[bool, float, str, int, int]] = []

    def add(self, reference: np.ndarray, converted: np.ndarray, labels: np.ndarray,
            names: list[str]) -> None:
        diff = np.abs(converted.astype(np.float64) - reference.astype(np.float64))
        per_image = diff.max(axis=1)
        self.max_abs = float(np.max([self.max_abs, diff.max()]))  # NaN wins, as it should
        self.image_max_abs.append(per_image)
        self.image_scale.append(np.abs(reference.astype(np.float64)).max(axis=1))
        self.image_names.extend(names)
        self.sum_abs += float(diff.sum())
        self.elements += diff.size
        ref_top1, conv_top1 = reference.argmax(axis=1), converted.argmax(axis=1)
        agree = ref_top1 == conv_top1
        self.agree += int(agree.sum())
        self.images += len(labels)
        self.reference_hits += topk_hits(reference, labels, self.class_offset)
        self.converted_hits += topk_hits(converted, labels, self.class_offset)
        # disagreeing images first, then the largest difference (NaN counts as the largest)
        largest = np.nan_to_num(per_image, nan=np.inf)
        for i in np.lexsort((-largest, agree))[: self.worst]:
            self.candidates.append((bool(agree[i]), -float(largest[i]), names[i],
                                    int(ref_top1[i]), int(conv_top1[i])))
        self.candidates = sorted(self.candidates, key=lambda c: (c[0], c[1]))[: self.worst]

    def result(self, dataset_images: int, tolerance: ParityTolerance) -> dict[str, Any]:
        ref_acc = [100.0 * h / self.images for h in self.reference_hits]
        conv_acc = [100.0 * h / self.images for h in self.converted_hits]
        differences = np.concatenate(self.image_max_abs)
        scales = np.concatenate(self.image_scale)
        relative = differences / np.maximum(scales, np.finfo(np.float64).tiny)
        # the image that uses the most of its bound (NaN counts as the worst)
        used = np.nan_to_num(
            differences / (tolerance.max_abs_diff + tolerance.rtol * scales), nan=np.inf)
        worst_bound = int(np.argmax(used))
        metrics = {
            "parity_max_abs_diff": self.max_abs,
            "parity_max_rel_diff": float(np.max(relative)),  # NaN wins here too
            "parity_logit_scale": float(scales.max()),
            "parity_bound_used": float(used[worst_bound]),
            "parity_mean_abs_diff": self.sum_abs / self.elements,
            "parity_top1_agreement": self.agree / self.images,
            "parity_top1_delta": conv_acc[0] - ref_acc[0],
            "parity_top5_delta": conv_acc[4] - ref_acc[4],
            "parity_reference_top1": ref_acc[0],
            "parity_reference_top5": ref_acc[4],
            "parity_images": float(self.images),
            "parity_coverage": self.images / dataset_images,
        }
        worst_images = [{"image": name, "max_abs_diff": -negative, "reference_top1": ref,
                         "converted_top1": conv}
                        for _, negative, name, ref, conv in self.candidates]
        bound = {"image": self.image_names[worst_bound],
                 "abs_diff": float(differences[worst_bound]),
                 "logit_scale": float(scales[worst_bound]),
                 "allowed": tolerance.max_abs_diff + tolerance.rtol * float(scales[worst_bound])}
        return {"metrics": metrics, "worst_images": worst_images, "worst_bound": bound,
                "disagreeing_images": self.images - self.agree, "num_images": self.images}


def compare(reference: np.ndarray, converted: np.ndarray, labels: np.ndarray, class_offset: int,
            names: list[str], worst: int, tolerance: ParityTolerance) -> dict[str, Any]:
    """Per-image comparison of two (N, classes) logit arrays; the metrics and the worst images."""
    tally = Tally(class_offset, worst)
    tally.add(reference, converted, labels, names)
    return tally.result(len(labels), tolerance)


def compare_entries(reference_index: Path, converted_index: Path, data: PreprocessedDataset,
                    class_offset: int, worst: int, tolerance: ParityTolerance) -> dict[str, Any]:
    """The comparison of two logit entries, one reference chunk at a time (the reference may
    cover a sample of the images: the converted rows of those images are taken)."""
    sampled = logits_indices(reference_index)
    converted = LogitsRows(converted_index)
    tally = Tally(class_offset, worst)
    row = 0
    for reference in iter_logits(reference_index):
        images = (np.arange(row, row + len(reference)) if sampled is None
                  else sampled[row : row + len(reference)])
        theirs = converted.take(images)
        if theirs.shape != reference.shape:
            raise ParityError(
                f"parity: PyTorch gives logits of {reference.shape[1]} classes, the converted "
                f"model {theirs.shape[1]}: the converted model is not the exported one"
            )
        tally.add(reference, theirs, data.labels[images], [data.names[i] for i in images])
        row += len(reference)
    return tally.result(len(data), tolerance)


def breaches(result: dict[str, Any], tolerance: ParityTolerance) -> list[str]:
    """What exceeds the tolerance `result` was compared under (`compare(..., tolerance)`);
    written as `not <=` so that a NaN is a breach too. The logit bound names the image, its
    difference and which term of the bound it is judged by."""
    metrics = result["metrics"]
    found = []
    if not metrics["parity_bound_used"] <= 1.0:
        worst = result["worst_bound"]
        relative = tolerance.rtol * worst["logit_scale"]
        which = ("the absolute floor max_abs_diff dominates" if relative < tolerance.max_abs_diff
                 else "the relative term rtol x logit scale dominates")
        found.append(
            f"max_abs_diff {worst['abs_diff']:.4g} > {worst['allowed']:.4g} = max_abs_diff "
            f"{tolerance.max_abs_diff:g} + rtol {tolerance.rtol:g} x logit scale "
            f"{worst['logit_scale']:.4g} on {worst['image']} ({which}; raise "
            f"{'max_abs_diff' if relative < tolerance.max_abs_diff else 'rtol'} only if the "
            f"difference is expected)")
    if not metrics["parity_top1_agreement"] >= tolerance.min_top1_agreement:
        found.append(f"top1_agreement {metrics['parity_top1_agreement']:.4f} < "
                     f"{tolerance.min_top1_agreement:g}")
    for k in (1, 5):
        delta = metrics[f"parity_top{k}_delta"]
        if not abs(delta) <= tolerance.max_topk_delta:
            found.append(f"top{k} delta {delta:+.3f} points, beyond ±{tolerance.max_topk_delta:g}")
    return found


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    data = PreprocessedDataset(inputs["dataset"])
    precision = settings.precision
    tolerance = settings.tolerance
    result = compare_entries(inputs["reference_logits"], inputs["logits"], data,
                             settings.class_offset, settings.worst, tolerance)
    covered = f"{result['num_images']} of {len(data)} images"
    found = breaches(result, tolerance)
    report = {
        **result,
        "precision": precision,
        "tolerance": asdict(tolerance),
        "passed": not found,
        "breaches": found,
        "method": "PyTorch (eval, no_grad, batch 16; the reference stage) and the converted model "
                  "(infer stage) on the same normalized uint8 crops; differences in float64; "
                  f"{covered}" + (" (a seeded sample: parity.sample)"
                                  if result["num_images"] < len(data) else ""),
    }
    atomic_write_text(out_dir / REPORT, json.dumps(report, indent=2))
    metrics = result["metrics"]
    log.info("parity (%s): max_abs_diff %.3g (%.2g of the logit scale), top-1 agreement %.4f, "
             "top-1 delta %+.3f, top-5 delta %+.3f points: %s", precision,
             metrics["parity_max_abs_diff"], metrics["parity_max_rel_diff"],
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
              "disagreeing_images": result["disagreeing_images"], "covered": covered},
    )
