"""reference: the PyTorch model's logits on the preprocessed dataset, the yardstick of `parity`.

The very same normalized batches `infer` feeds the converted model go through the model `export`
read (eval mode, no_grad, fp32 on the CPU). Keyed by the model and the dataset only, so a
batch-size sweep, another chip or another tolerance computes it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runner import artifacts
from runner.artifacts import PreprocessedDataset, chunk_ranges
from runner.cache import StageOutput
from runner.config import Normalization, RunConfig
from runner.data.transforms import normalize
from runner.models.spec import ModelSpec

NEEDS = ("dataset",)
GIVES = ("reference_logits",)
CODE = ("runner.models.build", "runner.models.spec", "runner.data.transforms",
        "runner.artifacts")
# PyTorch's batch size: fixed, so the reference does not change with `bs`
BATCH = 16
CHUNK = BATCH * 16  # images per logits chunk: the unit of resume


@dataclass(frozen=True)
class Settings:
    model: ModelSpec
    normalization: Normalization  # applied to each batch, as infer does

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        return cls(ModelSpec.from_config(cfg), cfg.model.preprocess.normalization())


def check(settings: Settings) -> None:
    settings.model.check()


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    import torch

    data = PreprocessedDataset(inputs["dataset"])
    net = settings.model.build()
    chunks = chunk_ranges(len(data), CHUNK)
    todo = [c for c in chunks if not artifacts.has_logits_chunk(out_dir, c[0])]
    progress = tqdm(total=len(data), initial=len(data) - sum(b - a for a, b in todo),
                    desc="reference: PyTorch", unit="img")
    for start, stop in todo:
        outputs = []
        for batch_start in range(start, stop, BATCH):
            # plain reads, not the memory map: resident memory stays flat over a large dataset
            batch = normalize(data.read(batch_start, min(batch_start + BATCH, stop)),
                              settings.normalization)
            with torch.no_grad():
                outputs.append(net(torch.from_numpy(batch)).numpy())
        artifacts.save_logits_chunk(out_dir, start, np.concatenate(outputs))
        progress.update(stop - start)
    progress.close()
    index = artifacts.write_logits_index(out_dir, chunks, len(data))
    return StageOutput(artifacts={"reference_logits": index},
                       info={"weights": settings.model.weights_identity, "batch": BATCH,
                             "resumed_chunks": len(chunks) - len(todo),
                             "computed_chunks": len(todo)})
