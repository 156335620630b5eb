"""Where a checkpoint comes from: the guide's URL (downloaded, checksummed, cached), a local
path, or `random` (seeded init, for offline runs whose accuracy means nothing)."""

from __future__ import annotations

import base64
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from runner import redact
from runner.cache import digest_file
from runner.config import ModelConfig
from runner.errors import WeightsError

RANDOM = "random"


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "url", "path" or "random"
    location: str  # the URL or path as given; "random" for random init
    checksum: str | None  # "md5:<hex>" / "sha256:<hex>" expected, if known

    @property
    def is_random(self) -> bool:
        return self.kind == RANDOM


def source(cfg: ModelConfig) -> WeightsSource:
    if cfg.weights == RANDOM:
        return WeightsSource(RANDOM, RANDOM, None)
    if re.match(r"^https?://", cfg.weights):
        checksum = cfg.weights_checksum or _hub_checksum(cfg.weights)
        return WeightsSource("url", cfg.weights, checksum)
    return WeightsSource("path", str(Path(cfg.weights).expanduser()), cfg.weights_checksum)


def _hub_checksum(url: str) -> str | None:
    """torch.hub names checkpoints `<name>-<first hex digits of sha256>.pth`."""
    match = re.search(r"-([0-9a-f]{8,})\.[a-z]+$", url)
    return f"sha256:{match.group(1)}" if match else None


def identity(src: WeightsSource, seed: int) -> str:
    """What determines the weights, without downloading: the checksum when it is known."""
    if src.is_random:
        return f"random(seed={seed})"
    if src.kind == "url" and src.checksum:
        return src.checksum
    path = Path(src.location)
    if src.kind == "path" and path.is_file():
        stat = path.stat()
        return _file_identity(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return src.location


@lru_cache(maxsize=16)
def _file_identity(path: str, size: int, mtime_ns: int) -> str:
    # several stages key on the same checkpoint: hash it once per (path, size, mtime)
    return f"sha256:{digest_file(Path(path))}"


def verify(path: Path, checksum: str | None, downloaded: bool = True) -> None:
    """Check a checkpoint against its expected checksum; `downloaded`: fetched by the runner
    (a mismatch means a damaged download) rather than a file the user named."""
    if checksum is None:
        return
    algorithm, _, expected = checksum.partition(":")
    actual = digest_file(path, algorithm)
    if not actual.startswith(expected.lower()):
        if downloaded:
            raise WeightsError(
                f"checkpoint {path} has {algorithm} {actual}, expected {expected}: the file is "
                "corrupt or not the one named by model.weights_checksum; delete it and fetch it "
                "again"
            )
        raise WeightsError(
            f"checkpoint {path} has {algorithm} {actual}, not the {expected} of "
            "model.weights_checksum (the guide's checkpoint): if it is your own checkpoint, pass "
            f"model.weights_checksum={algorithm}:{actual} (or model.weights_checksum=null)"
        )


def cached_path(url: str, weights_dir: Path) -> Path:
    return weights_dir / url.rsplit("/", 1)[-1]


def _request(url: str) -> urllib.request.Request:
    """A request for `url`; `user:password@` in it becomes a basic-auth header, as curl does it
    (urllib would take the password for the port, and print it in its error)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return urllib.request.Request(url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(parts._replace(netloc=netloc).geturl())
    credentials = (f"{urllib.parse.unquote(parts.username or '')}:"
                   f"{urllib.parse.unquote(parts.password or '')}")
    request.add_header("Authorization",
                       "Basic " + base64.b64encode(credentials.encode()).decode())
    return request


def download(url: str, target: Path, checksum: str | None, timeout_s: float = 30.0) -> Path:
    """Fetch `url` to `target` (via a .part file), checking the checksum before it is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.name}.part-{os.getpid()}")
    try:
        request = _request(url)
        with urllib.request.urlopen(request, timeout=timeout_s) as response, \
                open(part, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
    except (urllib.error.URLError, OSError, ValueError) as error:
        part.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise WeightsError(
            f"could not download {redact.text(url)} ({reason}); without network, download it "
            "elsewhere and pass model.weights=/path/to/checkpoint.pth (or model.weights=random "
            "for a smoke run)"
        ) from None
    try:
        verify(part, checksum)
    except WeightsError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)
    return target


def check_local(path: Path) -> None:
    """A local model.weights is a checkpoint file: say what it is when it is not."""
    if path.is_file():
        return
    if path.is_dir():
        raise WeightsError(
            f"checkpoint {path} is a directory, not a checkpoint file: name the checkpoint file "
            f"in it (e.g. model.weights={path.resolve() / 'model.pth'})"
        )
    what = "is not a regular file" if path.exists() else "does not exist"
    raise WeightsError(
        f"checkpoint {path} {what}: fix model.weights (a checkpoint file, the "
        "official URL, or random)"
    )


def check_available(src: WeightsSource, weights_dir: Path, timeout_s: float = 10.0) -> None:
    """Before any stage runs: the checkpoint is a file, was downloaded already, or its URL
    answers (a HEAD request), so an offline machine is told at once, not after other work."""
    if src.is_random:
        return
    if src.kind == "path":
        check_local(Path(src.location))
        return
    if not cached_path(src.location, weights_dir).is_file():
        _probe(src.location, timeout_s)


@lru_cache(maxsize=16)
def _probe(url: str, timeout_s: float) -> None:
    # once per URL and process: export and reference both check the same checkpoint
    try:
        request = _request(url)  # credentials as a header, never in urllib's error
        request.method = "HEAD"
        urllib.request.urlopen(request, timeout=timeout_s).close()
    except urllib.error.HTTPError as error:
        if error.code in (404, 410):
            raise WeightsError(
                f"model.weights={url} answered {error.code} {error.reason}: fix the URL, or "
                "pass model.weights=/path/to/checkpoint.pth"
            ) from None
        # anything else (HEAD refused, a redirect the probe does not follow): it is there
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise WeightsError(
            f"cannot reach model.weights={url} ({reason}) to download it: without network, "
            "fetch it elsewhere and pass model.weights=/path/to/checkpoint.pth, or "
            "model.weights=random for a run whose accuracy means nothing (debug=smoke)"
        ) from None


def fetch(src: WeightsSource, weights_dir: Path) -> Path | None:
    """Local path of the verified checkpoint; None for random weights."""
    if src.is_random:
        return None
    if src.kind == "path":
        path = Path(src.location)
        check_local(path)
        verify(path, src.checksum, downloaded=False)
        return path
    target = cached_path(src.location, weights_dir)
    if target.is_file():
        verify(target, src.checksum)
        return target
    return download(src.location, target, src.checksum)
