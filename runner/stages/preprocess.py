"""preprocess: ImageNet val layout -> exact uint8 crops, in chunks, decoded by parallel workers.

The cache keeps the uint8 pixels after resize and crop (1/4 the size of the guides' float32 .bin
files, and lossless); `infer` normalizes each batch as it feeds it.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runner.cache import StageOutput, atomic_write_text, finish_file
from runner.config import PreprocessRecipe, RunConfig
from runner.data import dataset, synthetic
from runner.data.transforms import load_cropped
from runner.errors import DatasetError
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


PIECE = 16  # images per worker task: small enough to keep every core busy to the end
CHUNKS_IN_FLIGHT = 2  # chunks being filled at once, so workers never wait for a chunk's write


def _fill(job: tuple[str, int, list[str], PreprocessRecipe]) -> int:
    """Worker: decode `paths` into rows `start...` of a chunk file being filled; rows written."""
    target, start, paths, recipe = job
    crops = np.lib.format.open_memmap(target, mode="r+")
    for offset, path in enumerate(paths):
        crops[start + offset] = load_cropped(Path(path), recipe)
    crops.flush()
    return len(paths)


def _fill_chunks(chunks: dict[int, list[dataset.Sample]], recipe: PreprocessRecipe,
                 out_dir: Path, workers: int, progress: tqdm) -> None:
    """Write each chunk's crops, decoded by `workers` processes straight into the chunk's file.

    A chunk is filled as `.chunk_N.npy.filling` and renamed when all its rows are written, so a
    killed run leaves only whole chunk files. Pixels never travel back through the parent, and
    the next chunk's tasks are queued before the current one completes, so no core waits at a
    chunk boundary.
    """
    pending = list(chunks)

    def start(pool: ProcessPoolExecutor, index: int) -> tuple[int, Path, list[Future[int]]]:
        samples = chunks[index]
        filling = out_dir / f".{chunk_file(index)}.filling"
        np.lib.format.open_memmap(filling, mode="w+", dtype=np.uint8,
                                  shape=(len(samples), recipe.crop, recipe.crop, 3)).flush()
        # reserve the blocks now: a full disk is then an OSError here, not a SIGBUS that kills
        # the worker writing into a page of the (sparse) memory-mapped file
        with open(filling, "rb+") as stream:
            os.posix_fallocate(stream.fileno(), 0, os.fstat(stream.fileno()).st_size)
        jobs = [(str(filling), i, [str(s.path) for s in samples[i : i + PIECE]], recipe)
                for i in range(0, len(samples), PIECE)]
        return index, filling, [pool.submit(_fill, job) for job in jobs]

    pool = ProcessPoolExecutor(max_workers=workers, initializer=ignore_in_worker)
    try:
        in_flight = [start(pool, pending.pop(0)) for _ in range(CHUNKS_IN_FLIGHT) if pending]
        while in_flight:
            index, filling, futures = in_flight.pop(0)
            for future in futures:
                progress.update(future.result())
            if pending:
                in_flight.append(start(pool, pending.pop(0)))
            finish_file(filling, out_dir / chunk_file(index))
    finally:
        # on an error (a broken image, Ctrl-C) drop the queued tasks instead of finishing them,
        # and the chunks they were filling: only whole chunk files stay for the next run
        pool.shutdown(wait=True, cancel_futures=True)
        for unfinished in out_dir.glob(".chunk_*.filling"):
            unfinished.unlink(missing_ok=True)


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    samples = dataset.list_samples(cfg.dataset, cfg.model)
    recipe = cfg.model.preprocess
    size = cfg.preprocess.chunk_size
    chunks = [samples[i : i + size] for i in range(0, len(samples), size)]
    todo = {i: chunk for i, chunk in enumerate(chunks)
            if not (out_dir / chunk_file(i)).is_file()}
    workers = cfg.preprocess.workers or os.cpu_count() or 1
    done = len(samples) - sum(len(chunk) for chunk in todo.values())
    progress = tqdm(total=len(samples), initial=done, desc="preprocess", unit="img")
    if todo:
        _fill_chunks(todo, recipe, out_dir, workers, progress)
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

    def read(self, start: int, stop: int) -> np.ndarray:
        """The same crops as `pixels`, in a fresh array filled by plain file reads.

        Pages of a memory map that have been read stay in the process's resident memory until it
        is unmapped, so streaming a whole dataset through `pixels` grows RSS with the dataset;
        `read` keeps it flat (the page cache still serves repeated reads).
        """
        out = np.empty((stop - start, *self._chunks[0].shape[1:]), dtype=np.uint8)
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        for index in range(first, len(self._chunks)):
            lo, hi = self._starts[index], self._starts[index + 1]
            if lo >= stop:
                break
            chunk = self._chunks[index]
            a, b = max(start, lo), min(stop, hi)
            target = memoryview(out[a - start : b - start]).cast("B")
            with open(chunk.filename, "rb") as stream:
                stream.seek(chunk.offset + (a - lo) * chunk.strides[0])
                if stream.readinto(target) != target.nbytes:
                    raise DatasetError(f"{chunk.filename} is truncated: delete the preprocess "
                                       f"cache entry {self.root} and run again")
        return out
