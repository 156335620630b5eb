"""score: top-1..top-5 of ais_bench result files made elsewhere, as the guides' scripts score them.

For results computed where this runner does not run (`ais_bench --outfmt TXT` on an NPU host):
`python -m runner stage=score score.results=<folder> dataset.root=<root with the label file>`.
Files are matched to labels by image stem (`<stem>_0.txt` <-> `<stem>.JPEG <label>`), scored with
evaluate's top-k (label + model.class_offset) and written as the guides' metrics JSON, so the run
compares with in-runner ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from runner.cache import StageOutput, atomic_write_text, digest_file, digest_json
from runner.config import RunConfig
from runner.data import aisbench_files, dataset, synthetic
from runner.errors import ConfigError, ResultFilesError
from runner.stages.evaluate import METRICS_FILE, guide_json, topk_accuracy

NEEDS: tuple[str, ...] = ()
GIVES = ("metrics_json",)
CODE = ("runner.data.aisbench_files", "runner.data.dataset", "runner.stages.evaluate")


def results_folder(cfg: RunConfig) -> Path:
    if cfg.score.results is None:
        raise ConfigError(
            "score.results is not set: pass score.results=/path/to/folder of ais_bench result "
            "files (<image>_0.txt|.npy|.bin)"
        )
    return Path(cfg.score.results).expanduser()


def label_file(cfg: RunConfig) -> Path:
    synthetic.ensure(cfg.dataset)
    return dataset.dataset_root(cfg.dataset) / cfg.dataset.labels


def key_config(cfg: RunConfig) -> dict[str, Any]:
    files, fmt = aisbench_files.find_results(results_folder(cfg), cfg.score.format)
    labels = label_file(cfg)
    dataset.read_labels(labels)  # a missing or malformed label file fails here, named
    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files.values())
    return {
        "results": digest_json(stats),  # names, sizes and mtimes, as dataset.fingerprint does
        "format": fmt,
        "labels": digest_file(labels),
        "num_classes": cfg.model.num_classes,
        "class_offset": cfg.model.class_offset,
        "on_mismatch": cfg.dataset.on_mismatch,
    }


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    folder = results_folder(cfg)
    files, fmt = aisbench_files.find_results(folder, cfg.score.format)
    labels = {aisbench_files.image_stem(name): label
              for name, label in dataset.read_labels(label_file(cfg)).items()}
    unlabelled = sorted(s for s in files if s not in labels)
    missing = sorted(s for s in labels if s not in files)
    if (unlabelled or missing) and cfg.dataset.on_mismatch == "stop":
        problems = []
        if unlabelled:
            problems.append(f"{len(unlabelled)} result files without a label "
                            f"(e.g. {files[unlabelled[0]].name})")
        if missing:
            problems.append(f"{len(missing)} labelled images without a result file "
                            f"(e.g. {missing[0]})")
        raise ResultFilesError(
            f"{folder}: {' and '.join(problems)}; pass dataset.on_mismatch=skip to score the "
            "files that have a label, as the guides' scripts do"
        )
    stems = sorted((s for s in files if s in labels), key=dataset.natural_key)
    if not stems:
        raise ResultFilesError(f"{folder}: no result file matches a label in {label_file(cfg)}")
    logits = np.stack([aisbench_files.read_result(files[s], cfg.model.num_classes)
                       for s in stems])
    accuracies = topk_accuracy(logits, np.array([labels[s] for s in stems]),
                               cfg.model.class_offset)
    result = guide_json(accuracies, len(stems), logits.shape[1])
    atomic_write_text(out_dir / METRICS_FILE, json.dumps(result, indent=2))
    return StageOutput(
        artifacts={"metrics_json": METRICS_FILE},
        metrics={**{f"top{i + 1}": acc for i, acc in enumerate(accuracies)},
                 "num_images": float(len(stems))},
        info={"results": str(folder), "format": fmt, "scored": len(stems),
              "skipped_unlabelled": len(unlabelled), "labels_without_result": len(missing)},
    )
