"""Content-addressed cache of stage outputs.

An entry lives at `<cache_dir>/<stage>/<key>/` and is finished exactly when that folder exists:
a stage writes into `<key>.partial/` and the folder is renamed only after `result.json` is in it.
A killed stage therefore leaves a `.partial` folder, never a finished-looking entry; chunked stages
keep their finished chunks there (each written by rename too) and resume from them.
A file lock per key keeps two processes (parallel sweep jobs) from computing the same entry.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from runner.errors import StorageError
from runner.locks import file_lock

RESULT_FILE = "result.json"
# write failures that mean "this disk cannot take the output", as opposed to a bad input file
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


@dataclass
class StageOutput:
    """What a stage returns: files (relative to its folder), metrics and facts to log."""

    artifacts: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    # content digests of artifacts, when the stage computes them (else the entry key stands in)
    digests: dict[str, str] = field(default_factory=dict)
    # when, where and in which MLflow run it was made (set by the pipeline, runner.pipeline)
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class CacheEntry:
    stage: str
    key: str
    path: Path  # the finished folder
    output: StageOutput
    hit: bool

    def artifact(self, name: str) -> Path:
        return self.path / self.output.artifacts[name]

    def digest(self, name: str) -> str:
        return self.output.digests.get(name, f"{self.stage}:{self.key}")


def digest_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_file(path: Path, algorithm: str = "sha256") -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


@contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A stream whose content appears at `path` only when complete; on any failure (disk full,
    Ctrl-C) the temporary file is removed, so no half-written file is ever left behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output_path(path: Path) -> Iterator[Path]:
    """A temporary path for a library that writes a file itself (torch.onnx.export, atc): the
    file appears at `path` only when the block completes, and is removed on any failure."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    with _atomic_file(path) as stream:
        stream.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    # serialized in memory first: np.save into a file reports a full disk without an errno
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getbuffer())


def _load_output(path: Path) -> StageOutput:
    return StageOutput(**json.loads((path / RESULT_FILE).read_text()))


def lookup(cache_dir: Path, stage: str, key: str) -> CacheEntry | None:
    path = cache_dir / stage / key
    if (path / RESULT_FILE).is_file():
        return CacheEntry(stage, key, path, _load_output(path), hit=True)
    return None


def run_cached(
    cache_dir: Path,
    stage: str,
    key: str,
    compute: Callable[[Path], StageOutput],
    force: bool = False,
) -> CacheEntry:
    """The finished entry for `key`, computing it with `compute(work_dir)` unless it exists."""
    final = cache_dir / stage / key
    partial = final.with_name(f"{key}.partial")
    with file_lock(final.with_name(f"{key}.lock")):
        if not force and (entry := lookup(cache_dir, stage, key)) is not None:
            return entry
        if force and partial.exists():
            shutil.rmtree(partial)
        try:
            # an existing partial folder holds finished chunks to resume from
            partial.mkdir(parents=True, exist_ok=True)
            output = compute(partial)
            atomic_write_text(partial / RESULT_FILE, json.dumps(asdict(output), indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.rename(partial, final)
        except OSError as error:
            elsewhere = error.filename and not str(error.filename).startswith(str(cache_dir))
            if error.errno not in STORAGE_ERRNOS or elsewhere:
                raise  # not a failure to write this entry (e.g. an unreadable input)
            raise StorageError(
                f"cannot write the {stage} cache entry in {partial.parent} "
                f"({os.strerror(error.errno)}): free space there or pass "
                "paths.cache_dir=/a/writable/folder; finished chunks are kept for the rerun"
            ) from None
        return CacheEntry(stage, key, final, output, hit=False)


def check_writable(folder: Path, key: str) -> None:
    """Fail before any work when the output folder `key` names cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise StorageError(
            f"{key}={folder} is not writable ({reason}): pass {key}=/a/writable/folder"
        ) from None


def source_digest(module_name: str) -> str:
    """Digest of a module's source: a stage's cache key changes when its code does."""
    import importlib.util

    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ValueError(f"no source for module {module_name}")
    return digest_file(Path(spec.origin))[:16]
