"""The files stages hand to each other, in one place: every stage reads and writes them through
this module, so no stage imports another.

  preprocessed dataset  `manifest.json` + `chunk_NNNNNN.npy`: uint8 (N, H, W, 3) crops per chunk
  logits                `logits.json` (index) + `logits/<start>.npy`: float32 (n, classes) per chunk
  metrics JSON          the guides' `imagenet_acc_eval.py` result file
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from runner.cache import atomic_save_npy, atomic_write_text
from runner.errors import DatasetError, RunnerError

# --- preprocessed dataset ---------------------------------------------------------------------
MANIFEST = "manifest.json"


def chunk_file(index: int) -> str:
    return f"chunk_{index:06d}.npy"


def write_manifest(folder: Path, names: list[str], labels: list[int], chunks: int,
                   crop: int) -> None:
    manifest = {"names": names, "labels": labels,
                "chunks": [chunk_file(i) for i in range(chunks)],
                "shape": [crop, crop, 3], "dtype": "uint8"}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest))


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
        """uint8 (stop - start, H, W, 3) crops, read across chunk boundaries (memory-mapped)."""
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


# --- logits -----------------------------------------------------------------------------------
LOGITS_INDEX = "logits.json"
LOGITS_DIR = "logits"


def logits_chunk_name(start: int) -> str:
    return f"{LOGITS_DIR}/{start:09d}.npy"


def chunk_ranges(count: int, chunk_len: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_len, count)) for start in range(0, count, chunk_len)]


def save_logits_chunk(folder: Path, start: int, logits: np.ndarray) -> None:
    (folder / LOGITS_DIR).mkdir(exist_ok=True)
    atomic_save_npy(folder / logits_chunk_name(start), logits.astype(np.float32, copy=False))


def has_logits_chunk(folder: Path, start: int) -> bool:
    return (folder / logits_chunk_name(start)).is_file()


def write_logits_index(folder: Path, chunks: list[tuple[int, int]], count: int,
                       indices: list[int] | None = None) -> str:
    """The index of a folder's logit chunks, written last; its name (the stage's artifact).
    `indices`: the dataset images the rows are of, where they are a sample (else 0..count-1)."""
    files = [logits_chunk_name(start) for start, _ in chunks]
    index: dict[str, Any] = {"files": files, "count": count}
    if indices is not None:
        index["indices"] = indices
    atomic_write_text(folder / LOGITS_INDEX, json.dumps(index))
    return LOGITS_INDEX


def logits_indices(index_path: Path) -> np.ndarray | None:
    """The dataset images an index's rows are of, where they are a sample; None: all, in order."""
    indices = json.loads(index_path.read_text()).get("indices")
    return None if indices is None else np.asarray(indices, dtype=np.int64)


class LogitsRows:
    """Rows of an index's logits by dataset image, asked for in increasing order: one chunk in
    memory at a time, so reading a whole dataset's worth keeps memory flat."""

    def __init__(self, index_path: Path) -> None:
        index = json.loads(index_path.read_text())
        self._folder = index_path.parent
        self._files: list[str] = index["files"]
        self._count: int = index["count"]
        self._position = -1  # the chunk in memory
        self._chunk: np.ndarray | None = None
        self._start = 0  # its first row's image
        self._next_start = 0

    def _load_next(self) -> None:
        self._position += 1
        if self._position >= len(self._files):
            raise RunnerError(f"{self._folder / LOGITS_INDEX}: the logit files end before "
                              f"{self._count} rows; recompute that stage with cache.force")
        self._start = self._next_start
        self._chunk = np.load(self._folder / self._files[self._position])
        self._next_start = self._start + len(self._chunk)

    def take(self, images: np.ndarray) -> np.ndarray:
        """The rows of `images` (sorted, each at least the last one asked for)."""
        out = []
        for image in images:
            while self._chunk is None or image >= self._next_start:
                self._load_next()
            assert self._chunk is not None
            out.append(self._chunk[int(image) - self._start])
        return np.stack(out) if out else np.empty((0, 0), dtype=np.float32)


def iter_logits(index_path: Path) -> Iterator[np.ndarray]:
    """The logits of an index one chunk at a time, in dataset order (memory: one chunk)."""
    index = json.loads(index_path.read_text())
    seen = 0
    for name in index["files"]:
        chunk = np.load(index_path.parent / name)
        seen += len(chunk)
        yield chunk
    if seen != index["count"]:
        raise RunnerError(f"{index_path}: the logit files hold {seen} rows, the index says "
                          f"{index['count']}; recompute that stage with cache.force=[<stage>]")


def load_logits(index_path: Path) -> np.ndarray:
    """All logits of an index, (N, num_classes) float32, in dataset order."""
    return np.concatenate(list(iter_logits(index_path)))


# --- metrics JSON -----------------------------------------------------------------------------
METRICS_FILE = "metrics.json"


def guide_json(accuracies: list[float], num_images: int, num_classes: int) -> dict[str, Any]:
    """The guides' `imagenet_acc_eval.py` result file, values formatted the way it formats them."""
    values = [
        {"key": "Number of images", "value": str(num_images)},
        {"key": "Number of classes", "value": str(num_classes)},
    ]
    values += [
        {"key": f"Top{i + 1} accuracy", "value": f"{round(acc, 2)}%"}
        for i, acc in enumerate(accuracies)
    ]
    return {"title": "Overall statistical evaluation", "value": values}


def write_metrics_json(folder: Path, accuracies: list[float], num_images: int,
                       num_classes: int) -> str:
    atomic_write_text(folder / METRICS_FILE,
                      json.dumps(guide_json(accuracies, num_images, num_classes), indent=2))
    return METRICS_FILE
