"""Content-addressed cache of stage outputs.

An entry lives at `<cache_dir>/<stage>/<key>/` and is finished exactly when that folder exists:
a stage writes into `<key>.partial/` and the folder is renamed only after `result.json` is in it.
A killed stage therefore leaves a `.partial` folder, never a finished-looking entry; chunked stages
keep their finished chunks there (each written by rename too) and resume from them.
A file lock per key keeps two processes (parallel sweep jobs) from computing the same entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULT_FILE = "result.json"


@dataclass
class StageOutput:
    """What a stage returns: files (relative to its folder), metrics and facts to log."""

    artifacts: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    # content digests of artifacts, when the stage computes them (else the entry key stands in)
    digests: dict[str, str] = field(default_factory=dict)


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as stream:
        np.save(stream, array)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    with _locked(final.with_name(f"{key}.lock")):
        if not force and (entry := lookup(cache_dir, stage, key)) is not None:
            return entry
        if force and partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)  # an existing one holds chunks to resume from
        output = compute(partial)
        atomic_write_text(partial / RESULT_FILE, json.dumps(asdict(output), indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.rename(partial, final)
        return CacheEntry(stage, key, final, output, hit=False)


def source_digest(module_name: str) -> str:
    """Digest of a module's source: a stage's cache key changes when its code does."""
    import importlib.util

    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ValueError(f"no source for module {module_name}")
    return digest_file(Path(spec.origin))[:16]
