"""score: top-1..top-5 of ais_bench result files made elsewhere, as the guides' scripts score them.

For results computed where this runner does not run (`ais_bench --outfmt TXT` on an NPU host):
`python -m runner stage=score score.results=<folder> dataset.root=<root with the label file>`.
Files are matched to labels by image stem (`<stem>_0.txt` <-> `<stem>.JPEG <label>`), scored with
evaluate's top-k (label + model.class_offset) and written as the guides' metrics JSON, so the run
compares with in-runner ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runner.accuracy import topk_accuracy
from runner.artifacts import write_metrics_json
from runner.cache import StageOutput, digest_json
from runner.config import RunConfig, SyntheticConfig
from runner.data import aisbench_files, dataset
from runner.data.dataset import DatasetSpec
from runner.errors import ConfigError, ResultFilesError
from runner.settings import runtime_only

NEEDS: tuple[str, ...] = ()
GIVES = ("metrics_json",)
CODE = ("runner.data.aisbench_files", "runner.data.dataset", "runner.accuracy",
        "runner.artifacts")


@dataclass(frozen=True)
class Settings:
    results: str  # the folder of ais_bench result files
    format: str  # their format, resolved from `auto`
    results_fingerprint: str  # names, sizes and mtimes, as a dataset's fingerprint
    # the labels' ({image: class}, sorted, whichever the layout); None for a synthetic dataset
    labels_digest: str | None
    synthetic: SyntheticConfig | None  # whose generator's settings are its identity
    on_mismatch: str  # result files without a label, labels without a file: stop or skip
    num_classes: int
    class_offset: int
    dataset: DatasetSpec = runtime_only()  # where the labels are (generated if synthetic)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        if cfg.score.results is None:
            raise ConfigError(
                "score.results is not set: pass score.results=/path/to/folder of ais_bench "
                "result files (<image>_0.txt|.npy|.bin)"
            )
        folder = Path(cfg.score.results).expanduser()
        files, fmt = aisbench_files.find_results(folder, cfg.score.format)
        stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files.values())
        spec = DatasetSpec.for_labels(cfg)  # the labels only: score reads no image
        labels_digest = None
        if spec.synthetic is None:
            # a missing or malformed label file, or an unknown class folder, fails here
            labels_digest = digest_json(sorted(spec.labels_by_name().items()))
        return cls(str(folder), fmt, digest_json(stats), labels_digest, spec.synthetic,
                   spec.on_mismatch, cfg.model.num_classes, cfg.model.class_offset,
                   dataset=spec)


def check(settings: Settings) -> None:
    settings.dataset.check()


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    folder = Path(settings.results)
    files, fmt = aisbench_files.find_results(folder, settings.format)
    settings.dataset.ensure()  # a synthetic dataset's label file is generated with its images
    label_file = settings.dataset.label_source
    labels = {aisbench_files.image_stem(name): label
              for name, label in settings.dataset.labels_by_name().items()}
    unlabelled = sorted(s for s in files if s not in labels)
    missing = sorted(s for s in labels if s not in files)
    if (unlabelled or missing) and settings.on_mismatch == "stop":
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
        raise ResultFilesError(f"{folder}: no result file matches a label in {label_file}")
    logits = np.stack([aisbench_files.read_result(files[s], settings.num_classes)
                       for s in stems])
    accuracies = topk_accuracy(logits, np.array([labels[s] for s in stems]),
                               settings.class_offset)
    name = write_metrics_json(out_dir, accuracies, len(stems), logits.shape[1])
    return StageOutput(
        artifacts={"metrics_json": name},
        metrics={**{f"top{i + 1}": acc for i, acc in enumerate(accuracies)},
                 "num_images": float(len(stems))},
        info={"results": str(folder), "format": fmt, "scored": len(stems),
              "skipped_unlabelled": len(unlabelled), "labels_without_result": len(missing)},
    )
