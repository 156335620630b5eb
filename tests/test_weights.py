"""Checkpoints: download from a real HTTP server with checksum, local paths, clear failures."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch

from runner.config import ModelConfig
from runner.errors import WeightsError
from runner.models import build, weights


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    httpd.shutdown()


def _checkpoint(path: Path) -> str:
    torch.manual_seed(1)
    torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _model_cfg(weights_value: str, checksum: str | None) -> ModelConfig:
    return ModelConfig(name="tiny", arch="torch.nn.Linear", weights=weights_value,
                       weights_checksum=checksum)


def test_download_verifies_md5_and_caches(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    md5 = _checkpoint(served / "tiny-0123abcd.pth")
    src = weights.source(_model_cfg(f"{url}/tiny-0123abcd.pth", f"md5:{md5}"))
    assert weights.identity(src, seed=0) == f"md5:{md5}"  # known without downloading
    path = weights.fetch(src, tmp_path / "weights")
    assert path == tmp_path / "weights" / "tiny-0123abcd.pth"
    assert hashlib.md5(path.read_bytes()).hexdigest() == md5
    (served / "tiny-0123abcd.pth").unlink()  # a second fetch uses the cached copy
    assert weights.fetch(src, tmp_path / "weights") == path


def test_md5_mismatch_is_refused_and_nothing_kept(server: tuple[str, Path],
                                                  tmp_path: Path) -> None:
    url, served = server
    _checkpoint(served / "bad.pth")
    src = weights.source(_model_cfg(f"{url}/bad.pth", "md5:" + "0" * 32))
    with pytest.raises(WeightsError, match=r"has md5 .* expected 0000"):
        weights.fetch(src, tmp_path / "weights")
    assert list((tmp_path / "weights").iterdir()) == []


def test_unreachable_url_tells_to_pass_a_local_path(tmp_path: Path) -> None:
    src = weights.source(_model_cfg("http://127.0.0.1:9/alexnet-owt-4df8aa71.pth", None))
    assert src.checksum == "sha256:4df8aa71"  # torch.hub's name convention
    with pytest.raises(WeightsError, match=r"pass model\.weights=/path/to/checkpoint\.pth"):
        weights.fetch(src, tmp_path)


def test_local_path_and_missing_path(tmp_path: Path) -> None:
    md5 = _checkpoint(tmp_path / "w.pth")
    src = weights.source(_model_cfg(str(tmp_path / "w.pth"), f"md5:{md5}"))
    assert weights.fetch(src, tmp_path) == tmp_path / "w.pth"
    missing = weights.source(_model_cfg(str(tmp_path / "nope.pth"), None))
    with pytest.raises(WeightsError, match=r"nope\.pth does not exist"):
        weights.fetch(missing, tmp_path)


def test_random_weights_are_seeded() -> None:
    cfg = ModelConfig(name="alexnet", arch="torchvision.models.alexnet")
    first = build.build(cfg.arch, cfg.arch_kwargs, None, seed=5).state_dict()
    second = build.build(cfg.arch, cfg.arch_kwargs, None, seed=5).state_dict()
    other = build.build(cfg.arch, cfg.arch_kwargs, None, seed=6).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["features.0.weight"], other["features.0.weight"])


def test_checkpoint_with_wrong_keys_lists_them(tmp_path: Path) -> None:
    torch.save({"bogus.weight": torch.zeros(1)}, tmp_path / "w.pth")
    cfg = ModelConfig(name="alexnet", arch="torchvision.models.alexnet")
    with pytest.raises(WeightsError, match=r"16 missing keys \(features.0.weight.*1 unexpected"):
        build.build(cfg.arch, cfg.arch_kwargs, tmp_path / "w.pth", seed=0)
