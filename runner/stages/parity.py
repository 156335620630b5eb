"""parity: the PyTorch model and the converted model on the same evaluation tensors.

`infer` ran the converted model over the preprocessed dataset; parity runs the PyTorch model (the
checkpoint `export` read) on the very same normalized batches and compares the logits image by
image: largest and mean |difference|, the fraction of images whose top-1 class agrees, and the
top-1/top-5 accuracy of each. A breach of `parity.tolerance.<chip.precision>` fails the run,
naming the worst images.

The PyTorch logits are a cache entry of their own (`parity_reference`), keyed by model, weights
and dataset only, so a batch-size sweep, another chip or a changed tolerance computes them once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from runner.cache import (
    StageOutput,
    atomic_save_npy,
    atomic_write_text,
    digest_file,
    digest_json,
    run_cached,
    source_digest,
)
from runner.config import ParityTolerance, RunConfig
from runner.data.transforms import normalize
from runner.errors import ParityError
from runner.models import build, weights
from runner.stages.evaluate import topk_accuracy
from runner.stages.export import arch_code
from runner.stages.infer import load_logits
from runner.stages.preprocess import MANIFEST, PreprocessedDataset

log = logging.getLogger("runner")

NEEDS = ("logits", "dataset")
GIVES = ("parity_json",)
CODE = ("runner.models.build", "runner.models.weights", "runner.data.transforms",
        "runner.stages.evaluate")
REPORT = "parity.json"
REFERENCE_STAGE = "parity_reference"
# PyTorch's batch size: fixed, so the reference does not change with `bs`
REFERENCE_BS = 16
REFERENCE_CHUNK = REFERENCE_BS * 16  # images per reference chunk: the unit of resume
LOGITS_DIR = "logits"
INDEX = "logits.json"


def _model_identity(cfg: RunConfig) -> dict[str, Any]:
    model = cfg.model
    return {
        "arch": model.arch,
        "arch_kwargs": model.arch_kwargs,
        "arch_code": arch_code(model.arch),
        "weights": weights.identity(weights.source(model), cfg.seed),
        "torch": torch.__version__,
    }


def key_config(cfg: RunConfig) -> dict[str, Any]:
    recipe = cfg.model.preprocess
    return {
        "model": _model_identity(cfg),
        "normalize": {"mean": recipe.mean, "std": recipe.std},
        "class_offset": cfg.model.class_offset,
        "precision": cfg.chip.precision,
        "tolerance": asdict(getattr(cfg.parity.tolerance, cfg.chip.precision)),
        "worst": cfg.parity.worst,
    }


def _compute_reference(cfg: RunConfig, dataset_dir: Path, out_dir: Path) -> StageOutput:
    data = PreprocessedDataset(dataset_dir)
    src = weights.source(cfg.model)
    net = build.build(cfg.model, weights.fetch(src, cfg.cache_dir), cfg.seed)
    recipe = cfg.model.preprocess
    (out_dir / LOGITS_DIR).mkdir(exist_ok=True)
    files = []
    progress = tqdm(total=len(data), desc="parity: PyTorch", unit="img")
    for start in range(0, len(data), REFERENCE_CHUNK):
        stop = min(start + REFERENCE_CHUNK, len(data))
        name = f"{LOGITS_DIR}/{start:09d}.npy"
        files.append(name)
        if not (out_dir / name).is_file():
            outputs = []
            for batch_start in range(start, stop, REFERENCE_BS):
                batch = normalize(data.pixels(batch_start, min(batch_start + REFERENCE_BS, stop)),
                                  recipe)
                with torch.no_grad():
                    outputs.append(net(torch.from_numpy(batch)).numpy())
            atomic_save_npy(out_dir / name, np.concatenate(outputs).astype(np.float32))
        progress.update(stop - start)
    progress.close()
    atomic_write_text(out_dir / INDEX, json.dumps({"files": files, "count": len(data)}))
    return StageOutput(artifacts={"logits": INDEX},
                       info={"weights": weights.identity(src, cfg.seed), "batch": REFERENCE_BS})


def reference_logits(cfg: RunConfig, dataset_dir: Path) -> np.ndarray:
    """PyTorch's logits for every image of a preprocess entry, computed once and cached."""
    recipe = cfg.model.preprocess
    key = digest_json({
        "model": _model_identity(cfg),
        "normalize": {"mean": recipe.mean, "std": recipe.std},
        # a preprocess entry's folder is named by its content key
        "dataset": [dataset_dir.resolve().name, digest_file(dataset_dir / MANIFEST)],
        "batch": REFERENCE_BS,
        "code": {m: source_digest(m) for m in (__name__, *CODE, "runner.cache")},
    })[:24]
    entry = run_cached(cfg.cache_dir, REFERENCE_STAGE, key,
                       lambda out_dir: _compute_reference(cfg, dataset_dir, out_dir),
                       verify=cfg.cache.verify)
    return load_logits(entry.artifact("logits"))


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


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    converted = load_logits(inputs["logits"])
    data = PreprocessedDataset(inputs["dataset"])
    reference = reference_logits(cfg, inputs["dataset"])
    if reference.shape != converted.shape:
        raise ParityError(
            f"parity: PyTorch gives logits of shape {reference.shape}, the converted model "
            f"{converted.shape}: the converted model is not the exported one"
        )
    precision = cfg.chip.precision
    tolerance = getattr(cfg.parity.tolerance, precision)
    result = compare(reference, converted, data.labels, cfg.model.class_offset, data.names,
                     cfg.parity.worst)
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
