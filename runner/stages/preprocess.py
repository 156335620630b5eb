"""preprocess: ImageNet val layout -> exact uint8 crops, in chunks, decoded by parallel workers.

The cache keeps the uint8 pixels after resize and crop (1/4 the size of the guides' float32 .bin
files, and lossless); `infer` normalizes each batch as it feeds it.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runner import page_cache
from runner.artifacts import chunk_file, write_manifest
from runner.cache import StageOutput, finish_file
from runner.config import Cropping, RunConfig
from runner.data import dataset
from runner.data.dataset import DatasetSpec
from runner.data.transforms import load_cropped
from runner.interrupts import ignore_in_worker
from runner.page_cache import read_ahead  # a name here: benchmarks/preprocess_cold swaps it
from runner.settings import runtime_only

NEEDS: tuple[str, ...] = ()
GIVES = ("dataset",)
CODE = ("runner.data.transforms", "runner.data.dataset", "runner.data.synthetic",
        "runner.artifacts")


@dataclass(frozen=True)
class Settings:
    dataset: DatasetSpec  # which images and labels (with a fingerprint of their content)
    recipe: Cropping  # how one image becomes the cached crop
    chunk_size: int  # images per cache chunk: the unit of resume
    workers: int = runtime_only(0)  # decoding processes; 0 = one per core

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        return cls(DatasetSpec.from_config(cfg), cfg.model.preprocess.cropping(),
                   cfg.preprocess.chunk_size, cfg.preprocess.workers)


PIECE = 16  # images per worker task: small enough to keep every core busy to the end
CHUNKS_IN_FLIGHT = 2  # chunks being filled at once, so workers never wait for a chunk's write


def _fill(job: tuple[str, int, int, list[str], Cropping]) -> int:
    """Worker: decode `paths` into the rows from `first_row` of a chunk file being filled, whose
    pixels begin at byte `data_offset`; rows written.

    Rows are written with pwrite, not through a memory map of the file: a page first written
    through a map faults into the kernel one page at a time (in one process, 0.23 ms per 224x224
    crop against 0.06 with pwrite; in the stage, with the seal hashed as pieces finish, 2-3% more
    images/s side by side, benchmarks/preprocess_speed). No fsync here:
    the rows are in the page cache, shared with every process, when this returns, and the parent
    fsyncs the whole chunk once before its rename (cache.finish_file). A flush per piece made the
    workers wait on the disk: 15-25% fewer images/s (benchmarks/preprocess_speed).
    """
    target, data_offset, first_row, paths, recipe = job
    shape = (recipe.crop, recipe.crop, 3)
    read_ahead(paths)
    descriptor = os.open(target, os.O_WRONLY)
    try:
        for row, path in enumerate(paths, start=first_row):
            pixels = np.ascontiguousarray(load_cropped(Path(path), recipe))
            # raw bytes go where a row of this shape belongs: nothing else checks the shape now
            if pixels.shape != shape or pixels.dtype != np.uint8:
                raise RuntimeError(f"{path}: load_cropped gave {pixels.dtype} {pixels.shape}, "
                                   f"not uint8 {shape} (a bug in runner.data.transforms)")
            _write_all(descriptor, pixels.data, data_offset + row * pixels.nbytes)
    finally:
        os.close(descriptor)
    return len(paths)


def _write_all(descriptor: int, data: memoryview, offset: int) -> None:
    """pwrite all of `data` at `offset` (a write may take fewer bytes than it is given)."""
    data = data.cast("B")
    while data:
        written = os.pwrite(descriptor, data, offset)
        data, offset = data[written:], offset + written


def _hash_as_filled(filling: Path, data_offset: int, row_bytes: int,
                    pieces: list[Future[int]], progress: tqdm) -> str:
    """Wait for a chunk's pieces, in file order, hashing each as it is written; the sha256.

    Only the last piece is then left to hash when the chunk is done, not the whole file, which
    the idle cores would wait for at the end of the run. The file is mapped: its pages are
    hashed where they lie in the page cache, without a copy.
    """
    sha256, rows, hashed = hashlib.sha256(), 0, 0
    with open(filling, "rb") as stream, \
            mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as mapped, \
            memoryview(mapped) as content:
        for piece in pieces:
            written = piece.result()
            rows += written
            end = data_offset + rows * row_bytes  # the .npy header, then the rows so far
            sha256.update(content[hashed:end])
            hashed = end
            progress.update(written)
    return sha256.hexdigest()


def _fill_chunks(chunks: dict[int, list[dataset.Sample]], recipe: Cropping,
                 out_dir: Path, workers: int, progress: tqdm) -> None:
    """Write each chunk's crops, decoded by `workers` processes straight into the chunk's file.

    A chunk is filled as `.chunk_N.npy.filling` and renamed when all its rows are written, so a
    killed run leaves only whole chunk files. Pixels never travel back through the parent, and
    the next chunk's tasks are queued before the current one completes, so no core waits at a
    chunk boundary.
    """
    pending = list(chunks)

    def start(pool: ProcessPoolExecutor, index: int) -> tuple[int, Path, int, list[Future[int]]]:
        samples = chunks[index]
        filling = out_dir / f".{chunk_file(index)}.filling"
        header = np.lib.format.open_memmap(filling, mode="w+", dtype=np.uint8,
                                           shape=(len(samples), recipe.crop, recipe.crop, 3))
        data_offset = header.offset  # where the .npy header ends and row 0 begins
        header.flush()
        del header
        # reserve the blocks now: a full disk is then an OSError here, before any image is
        # decoded, not in a worker's write halfway through the chunk
        with open(filling, "rb+") as stream:
            os.posix_fallocate(stream.fileno(), 0, os.fstat(stream.fileno()).st_size)
        jobs = [(str(filling), data_offset, i, [str(s.path) for s in samples[i : i + PIECE]],
                 recipe) for i in range(0, len(samples), PIECE)]
        return index, filling, data_offset, [pool.submit(_fill, job) for job in jobs]

    row_bytes = recipe.crop * recipe.crop * 3
    pool = ProcessPoolExecutor(max_workers=workers, initializer=ignore_in_worker)
    try:
        in_flight = [start(pool, pending.pop(0)) for _ in range(CHUNKS_IN_FLIGHT) if pending]
        while in_flight:
            index, filling, data_offset, futures = in_flight.pop(0)
            sha256 = _hash_as_filled(filling, data_offset, row_bytes, futures, progress)
            if pending:
                in_flight.append(start(pool, pending.pop(0)))
            finish_file(filling, out_dir / chunk_file(index), sha256)
            # fsynced, so clean: its pages go, and the stage holds one chunk's worth of page
            # cache, not the dataset's crops (7.2 GB at 50,000 AlexNet images). infer and the
            # reference read each chunk once, in order, from a thread that reads ahead of the
            # model. On this VM new page-cache pages are dear: 7.2 GB written as fsync'd 38 MB
            # files took 63 s (52 s kernel) keeping their pages, 5.6 s (2.5 s) releasing them.
            page_cache.release(out_dir / chunk_file(index))
    finally:
        # on an error (a broken image, Ctrl-C) drop the queued tasks instead of finishing them,
        # and the chunks they were filling: only whole chunk files stay for the next run
        pool.shutdown(wait=True, cancel_futures=True)
        for unfinished in out_dir.glob(".chunk_*.filling"):
            unfinished.unlink(missing_ok=True)


def check(settings: Settings) -> None:
    settings.dataset.check()


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    samples = settings.dataset.samples()  # generates a synthetic dataset on first use
    recipe = settings.recipe
    size = settings.chunk_size
    chunks = [samples[i : i + size] for i in range(0, len(samples), size)]
    todo = {i: chunk for i, chunk in enumerate(chunks)
            if not (out_dir / chunk_file(i)).is_file()}
    workers = settings.workers or os.cpu_count() or 1
    done = len(samples) - sum(len(chunk) for chunk in todo.values())
    progress = tqdm(total=len(samples), initial=done, desc="preprocess", unit="img")
    if todo:
        _fill_chunks(todo, recipe, out_dir, workers, progress)
    progress.close()
    write_manifest(out_dir, [s.name for s in samples], [s.label for s in samples], len(chunks),
                   recipe.crop)
    return StageOutput(
        artifacts={"dataset": "."},
        metrics={"num_images": float(len(samples))},
        info={"resumed_chunks": len(chunks) - len(todo), "computed_chunks": len(todo),
              "workers": workers},
    )
