"""preprocess: ImageNet val layout -> exact uint8 crops, in chunks, decoded by parallel workers.

The cache keeps the uint8 pixels after resize and crop (1/4 the size of the guides' float32 .bin
files, and lossless); `infer` normalizes each batch as it feeds it.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runner.cache import StageOutput, atomic_save_npy, atomic_write_text
from runner.config import PreprocessRecipe, RunConfig
from runner.data import dataset, synthetic
from runner.data.transforms import load_cropped
from runner.interrupts import ignore_in_worker

NEEDS: tuple[str, ...] = ()
GIVES = ("dataset",)
CODE = ("runner.data.transforms", "runner.data.dataset")
MANIFEST = "manifest.json"


def key_config(cfg: RunConfig) -> dict[str, Any]:
    synthetic.ensure(cfg.dataset)
    # with the model: labels outside its classes stop the run here, before any work
    samples = dataset.list_samples(cfg.dataset, cfg.model)
    recipe = cfg.model.preprocess
    return {
        "dataset": dataset.fingerprint(cfg.dataset, samples),
        "recipe": {k: getattr(recipe, k) for k in ("resize", "interpolation", "crop",
                                                   "crop_offset")},
        "chunk_size": cfg.preprocess.chunk_size,
    }


def chunk_file(index: int) -> str:
    return f"chunk_{index:06d}.npy"


def _load_one(job: tuple[str, PreprocessRecipe]) -> np.ndarray:
    path, recipe = job
    return load_cropped(Path(path), recipe)


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    samples = dataset.list_samples(cfg.dataset)
    recipe = cfg.model.preprocess
    size = cfg.preprocess.chunk_size
    chunks = [samples[i : i + size] for i in range(0, len(samples), size)]
    todo = [i for i in range(len(chunks)) if not (out_dir / chunk_file(i)).is_file()]
    workers = cfg.preprocess.workers or os.cpu_count() or 1
    done = sum(len(chunk) for i, chunk in enumerate(chunks) if i not in set(todo))
    progress = tqdm(total=len(samples), initial=done, desc="preprocess", unit="img")
    with ProcessPoolExecutor(max_workers=workers, initializer=ignore_in_worker) as pool:
        for index in todo:
            jobs = [(str(s.path), recipe) for s in chunks[index]]
            crops = []
            for crop in pool.map(_load_one, jobs, chunksize=8):
                crops.append(crop)
                progress.update()
            atomic_save_npy(out_dir / chunk_file(index), np.stack(crops))
    progress.close()
    manifest = {
        "names": [s.name for s in samples],
        "labels": [s.label for s in samples],
        "chunks": [chunk_file(i) for i in range(len(chunks))],
        "shape": [recipe.crop, recipe.crop, 3],
        "dtype": "uint8",
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest))
    return StageOutput(
        artifacts={"dataset": "."},
        metrics={"num_images": float(len(samples))},
        info={"resumed_chunks": len(chunks) - len(todo), "computed_chunks": len(todo),
              "workers": workers},
    )


class PreprocessedDataset:
    """Read access to a preprocess cache entry: labels, names and uint8 crops by index range."""

    def __init__(self, root: Path) -> None:
        self.root = root
        manifest = json.loads((root / MANIFEST).read_text())
        self.names: list[str] = manifest["names"]
        self.labels = np.asarray(manifest["labels"], dtype=np.int64)
        self._chunks = [np.load(root / name, mmap_mode="r") for name in manifest["chunks"]]
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks])

    def __len__(self) -> int:
        return len(self.names)

    def pixels(self, start: int, stop: int) -> np.ndarray:
        """uint8 (stop - start, H, W, 3) crops, read across chunk boundaries."""
        parts = []
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        for index in range(first, len(self._chunks)):
            lo, hi = self._starts[index], self._starts[index + 1]
            if lo >= stop:
                break
            parts.append(self._chunks[index][max(start, lo) - lo : min(stop, hi) - lo])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
