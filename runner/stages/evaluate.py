"""evaluate: top-1..top-5 accuracy of the logits against the labels, also as the guides' JSON."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner.accuracy import streamed_topk_accuracy
from runner.artifacts import PreprocessedDataset, iter_logits, write_metrics_json
from runner.cache import StageOutput
from runner.config import RunConfig

NEEDS = ("logits", "dataset")
GIVES = ("metrics_json",)
CODE = ("runner.accuracy", "runner.artifacts")


@dataclass(frozen=True)
class Settings:
    class_offset: int  # 1 for "imagenet+background" models: label + 1 is the class index
    num_classes: int  # what the guides' JSON reports: the length of an output row

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        return cls(cfg.model.class_offset, cfg.model.num_classes)


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    labels = PreprocessedDataset(inputs["dataset"]).labels
    accuracies = streamed_topk_accuracy(iter_logits(inputs["logits"]), labels,
                                        settings.class_offset)
    # the guides' script reports the length of an output row: 1001 for InceptionV4
    name = write_metrics_json(out_dir, accuracies, len(labels), settings.num_classes)
    return StageOutput(
        artifacts={"metrics_json": name},
        metrics={f"top{i + 1}": acc for i, acc in enumerate(accuracies)},
        info={"num_images": len(labels)},
    )
