"""Content-addressed cache of stage outputs.

An entry lives at `<cache_dir>/<stage>/<key>/` and is finished exactly when that folder exists:
a stage writes into `<key>.partial/` and the folder is renamed only after `result.json` is in it.
A killed stage therefore leaves a `.partial` folder, never a finished-looking entry; chunked stages
keep their finished chunks there (each written by rename too) and resume from them.
A file lock per key keeps two processes (parallel sweep jobs) from computing the same entry.

Integrity: `result.json` records every file's size and sha256, and its stat (size, mtime_ns,
ctime_ns, inode) as git's index does; a file finished inside a partial folder (a chunk) gets a
`.<name>.sum` sidecar with size and sha256, written after it. A lookup under the default
`cache.verify=stat` re-hashes every file whose stat differs from the record (an edit in place of
the same size changes mtime and ctime) and every small file; `size` checks sizes only (and
re-hashes small files), `full` re-hashes all. A resume keeps only chunks whose sidecar matches, so
a damaged, truncated or half-written file is recomputed, never used.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
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

log = logging.getLogger("runner")

RESULT_FILE = "result.json"
# write failures that mean "this disk cannot take the output", as opposed to a bad input file
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
VERIFY_MODES = ("stat", "size", "full")
# files up to this size are re-hashed on every use even with cache.verify=size: JSON results and
# manifests, whose damage a size check would miss, cost microseconds to hash
SMALL_FILE = 1 << 20


class DamagedEntry(Exception):
    """A finished entry (or a chunk of a partial one) whose files do not match what was recorded."""


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
    sha256 = hashlib.sha256(buffer.getbuffer()).hexdigest()
    _place_sealed(path, buffer.getbuffer().nbytes, sha256,
                  lambda: atomic_write_bytes(path, buffer.getbuffer()))


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.sum")


def _write_sidecar(path: Path, size: int, sha256: str) -> None:
    atomic_write_text(_sidecar(path), json.dumps({"size": size, "sha256": sha256}))


def seal(path: Path, sha256: str | None = None) -> None:
    """Record a finished file's size and digest in its sidecar: a file of a partial folder
    without a matching sidecar is unfinished (or damaged) and is not resumed."""
    _write_sidecar(path, path.stat().st_size, sha256 or digest_file(path))


def finish_file(tmp: Path, target: Path, sha256: str | None = None) -> None:
    """Make `tmp` (filled in place, e.g. by workers' writes) the finished file `target`, sealed
    with `sha256`, the hash of its content that a caller computed as it was written, or, when
    None, with a hash of the file read back.

    The sidecar is written before the rename, so a file that can be seen is sealed: an interrupt
    at any point leaves the file finished and kept, or absent (with at most a sidecar of nothing,
    which the next run drops). Sealed after the rename, a chunk seen finished was lost to an
    interrupt that came before its seal (tests/test_errors_interrupt.py caught one).
    """
    with open(tmp, "rb+") as stream:
        os.fsync(stream.fileno())
    _place_sealed(target, tmp.stat().st_size, sha256 or digest_file(tmp),
                  lambda: os.replace(tmp, target))


def _place_sealed(target: Path, size: int, sha256: str, place: Callable[[], None]) -> None:
    """Write `target`'s sidecar, then `place()` the file. A write that fails (a full disk) takes
    its sidecar back; an interrupt leaves a sidecar of nothing, dropped by the cache's clean-up
    of the partial folder (`_drop_unfinished`, `_keep_finished`)."""
    _write_sidecar(target, size, sha256)
    try:
        place()
    except OSError:
        _sidecar(target).unlink(missing_ok=True)
        raise


def _recorded(path: Path) -> tuple[int, str] | None:
    """(size, sha256) from a file's sidecar, None when it has none or an unreadable one."""
    try:
        record = json.loads(_sidecar(path).read_text())
        return int(record["size"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def file_stat(path: Path) -> list[int]:
    """What identifies a file's version without reading it: size, mtime_ns, ctime_ns, inode."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _check_file(path: Path, size: int, sha256: str, full: bool,
                recorded_stat: list[int] | None = None) -> str | None:
    """Why `path` is not the file recorded as (size, sha256); None when it is. With
    `recorded_stat` (cache.verify=stat), a file whose stat differs is re-hashed."""
    try:
        stat = path.stat()
    except OSError as error:
        return f"{path} is missing ({error.strerror})"
    if not path.is_file():
        return f"{path} is not a regular file"
    if stat.st_size != size:
        return f"{path} has {stat.st_size} bytes where {size} were written"
    changed = recorded_stat is not None and recorded_stat != [
        stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    if (full or changed or size <= SMALL_FILE) and digest_file(path) != sha256:
        how = " (its size is the same, its modification time is not)" if changed else ""
        return f"{path} does not have the sha256 recorded when it was written{how}"
    return None


def _load_output(path: Path, verify: str) -> StageOutput:
    """The output recorded in a finished entry, after checking its files against the record.
    Under cache.verify=stat a file whose stat changed but whose content did not (a copy of the
    cache, a restore) has its new stat recorded, so it is hashed once, not on every use."""
    result = path / RESULT_FILE
    try:
        record = json.loads(result.read_text())
        files = record.pop("files")
        if record.pop("digest") != digest_json({**record, "files": files}):
            raise ValueError("its content does not match its digest")
        stats: dict[str, list[int]] = record.pop("stats", {})
        output = StageOutput(**record)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = error.strerror if isinstance(error, OSError) else error
        raise DamagedEntry(f"{result} is damaged or unreadable ({reason})") from None
    refreshed = False
    for relative, (size, sha256) in files.items():
        file = path / relative
        # an entry written before stats were recorded has none: hashed once, then recorded
        recorded_stat = stats.get(relative, []) if verify == "stat" else None
        if (problem := _check_file(file, size, sha256, verify == "full",
                                   recorded_stat)) is not None:
            raise DamagedEntry(problem)
        if recorded_stat is not None and recorded_stat != file_stat(file):
            stats[relative] = file_stat(file)
            refreshed = True
    if refreshed:
        _write_record(path, output, files, stats)
    return output


def _write_record(folder: Path, output: StageOutput, files: dict[str, tuple[int, str]],
                  stats: dict[str, list[int]]) -> None:
    """result.json: the output, every file's (size, sha256) and stat, sealed by a digest."""
    record = {**asdict(output), "files": files, "stats": stats}
    record["digest"] = digest_json(record)
    try:
        atomic_write_text(folder / RESULT_FILE, json.dumps(record, indent=2))
    except OSError as error:
        if folder.name.endswith(".partial"):
            raise
        # a read-only cache (shared, mounted): the stats are refreshed by whoever can write
        log.debug("cannot refresh the recorded stats of %s: %s", folder, error)


def lookup(cache_dir: Path, stage: str, key: str,
           verify: str = "stat") -> CacheEntry | None:
    """The finished entry, None when there is none; DamagedEntry when its files are not the ones
    written (see the module's Integrity paragraph for what `verify` checks)."""
    path = cache_dir / stage / key
    if not path.is_dir():
        return None
    return CacheEntry(stage, key, path, _load_output(path, verify), hit=True)


def _is_temporary(path: Path) -> bool:
    """The runner's own temporary and sidecar files are dot-files; a stage's outputs are not."""
    return path.name.startswith(".")


def _keep_finished(partial: Path, full: bool) -> None:
    """Before resuming: keep the files of a partial folder whose sidecar matches them; remove the
    rest (a half-written output, a leftover temporary file, a damaged chunk)."""
    for path in sorted(p for p in partial.rglob("*") if p.is_file() or p.is_symlink()):
        if _is_temporary(path):
            if not (path.name.endswith(".sum") and path.with_name(path.name[1:-4]).exists()):
                path.unlink()
            continue
        recorded = _recorded(path)
        problem = None if recorded is None else _check_file(path, *recorded, full)
        if problem is not None:
            log.warning("%s: not resuming it, it is recomputed", problem)
        if recorded is None or problem is not None:
            path.unlink()
            _sidecar(path).unlink(missing_ok=True)


def _drop_unfinished(partial: Path) -> None:
    """After a failure: only finished (sealed) files stay, so a full disk gets its space back and
    nothing half-written remains; a partial folder left empty is removed."""
    if not partial.is_dir():
        return
    for path in sorted(partial.rglob("*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            continue
        sealed = not _is_temporary(path) and _recorded(path) is not None
        sidecar_of_file = _is_temporary(path) and path.name.endswith(".sum") and (
            path.with_name(path.name[1:-4]).exists())
        if not (sealed or sidecar_of_file):
            path.unlink(missing_ok=True)
    for folder in sorted((p for p in partial.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(partial.iterdir()):
        partial.rmdir()


def _seal_entry(partial: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (size, sha256)} of every output in a finished partial folder; sidecars
    give the digests of chunks hashed when written, the other files are hashed here."""
    files: dict[str, tuple[int, str]] = {}
    for path in sorted(p for p in partial.rglob("*") if p.is_file()):
        if _is_temporary(path) or (path.name == RESULT_FILE and path.parent == partial):
            continue
        size = path.stat().st_size
        recorded = _recorded(path)
        sha256 = recorded[1] if recorded is not None and recorded[0] == size else digest_file(path)
        files[str(path.relative_to(partial))] = (size, sha256)
    for path in [p for p in partial.rglob(".*") if p.is_file()]:
        path.unlink()
    return files


def _say_waiting(path: Path, holder: str) -> None:
    log.warning("waiting for %s, held by %s (the same stage with the same inputs); it is "
                "released when that run ends", path, holder)


def run_cached(
    cache_dir: Path,
    stage: str,
    key: str,
    compute: Callable[[Path], StageOutput],
    force: bool = False,
    verify: str = "stat",
) -> CacheEntry:
    """The finished entry for `key`, computing it with `compute(work_dir)` unless it exists.
    A damaged entry is reported, naming the file, and computed again."""
    final = cache_dir / stage / key
    partial = final.with_name(f"{key}.partial")
    full = verify == "full"
    with file_lock(final.with_name(f"{key}.lock"), on_wait=_say_waiting):
        if not force:
            try:
                if (entry := lookup(cache_dir, stage, key, verify)) is not None:
                    return entry
            except DamagedEntry as damage:
                log.warning("the %s cache entry %s is damaged: %s; computing it again",
                            stage, final, damage)
        if force and partial.exists():
            shutil.rmtree(partial)
        try:
            # an existing partial folder holds finished chunks to resume from
            partial.mkdir(parents=True, exist_ok=True)
            _keep_finished(partial, full)
            output = compute(partial)
            files = _seal_entry(partial)
            # renaming the folder below keeps every file's inode, mtime and ctime
            _write_record(partial, output, files,
                          {relative: file_stat(partial / relative) for relative in files})
            if final.exists():
                shutil.rmtree(final)
            os.rename(partial, final)
        except BaseException as error:
            _drop_unfinished(partial)
            if not isinstance(error, OSError):
                raise
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
