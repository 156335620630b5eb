"""reference: the PyTorch model's logits on the preprocessed dataset, the yardstick of `parity`.

The very same normalized batches `infer` feeds the converted model go through the model `export`
read (eval mode, no_grad, fp32; TF32 off on a GPU). Keyed by the model and the dataset only, so a
batch-size sweep, another chip or another tolerance computes it once. With `parity.sample=N`
only a seeded sample of N images is run (a 50,000-image dataset costs PyTorch on the CPU about an
hour for InceptionV4); the index then names the images its rows are of.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runner import artifacts
from runner.artifacts import PreprocessedDataset
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
    sample: int | None  # a seeded sample of this many images; None: every image
    seed: int  # picks the sample
    device: str  # auto (cuda where torch sees one) | cpu | cuda

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        # the float route's tensors whichever route infer feeds: parity holds the on-device
        # route to the float PyTorch reference (and one reference serves both routes)
        return cls(ModelSpec.from_config(cfg), cfg.model.preprocess.host_normalization(),
                   cfg.parity.sample, cfg.seed, cfg.parity.device)


def sample_indices(count: int, sample: int | None, seed: int) -> np.ndarray | None:
    """The images a sample covers, in dataset order; None when it covers them all."""
    if sample is None or sample >= count:
        return None
    return np.sort(np.random.default_rng(seed).choice(count, size=sample, replace=False))


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def check(settings: Settings) -> None:
    settings.model.check()


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    import torch

    data = PreprocessedDataset(inputs["dataset"])
    device = _device(settings.device)
    if device == "cuda":  # fp32 means fp32: no TensorFloat-32 in convolutions and matmuls
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    net = settings.model.build().to(device)
    sampled = sample_indices(len(data), settings.sample, settings.seed)
    images = np.arange(len(data)) if sampled is None else sampled
    chunks = artifacts.chunk_ranges(len(images), CHUNK)  # ranges of rows, not of images
    todo = [c for c in chunks if not artifacts.has_logits_chunk(out_dir, c[0])]
    progress = tqdm(total=len(images), initial=len(images) - sum(b - a for a, b in todo),
                    desc=f"reference: PyTorch ({device})", unit="img")
    for start, stop in todo:
        outputs = []
        for row in range(start, stop, BATCH):
            batch_images = images[row : min(row + BATCH, stop)]
            # plain reads, not the memory map: resident memory stays flat over a large dataset
            if sampled is None:
                pixels = data.read(int(batch_images[0]), int(batch_images[-1]) + 1)
            else:
                pixels = np.concatenate([data.read(int(i), int(i) + 1) for i in batch_images])
            batch = torch.from_numpy(normalize(pixels, settings.normalization)).to(device)
            with torch.no_grad():
                outputs.append(net(batch).float().cpu().numpy())
        artifacts.save_logits_chunk(out_dir, start, np.concatenate(outputs))
        progress.update(stop - start)
    progress.close()
    index = artifacts.write_logits_index(
        out_dir, chunks, len(images), None if sampled is None else sampled.tolist())
    return StageOutput(artifacts={"reference_logits": index},
                       info={"weights": settings.model.weights_identity, "batch": BATCH,
                             "device": device, "images": len(images),
                             "sampled": sampled is not None,
                             "resumed_chunks": len(chunks) - len(todo),
                             "computed_chunks": len(todo)})
