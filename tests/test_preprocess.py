"""The preprocess stage: parallel workers write exactly the single-process crops, in whole chunks,
resume from finished chunks, and keep 1/4 of the guides' float32 bytes per image."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common
from runner import artifacts
from runner.artifacts import PreprocessedDataset, chunk_file
from runner.cache import digest_file
from runner.data.transforms import load_cropped
from runner.stages import preprocess
from tests.conftest import run_config


def _cfg(root: Path, *overrides: str):
    return run_config("dataset=imagenet", f"dataset.root={root}", "preprocess.chunk_size=7",
                      "preprocess.workers=2", *overrides)


def test_parallel_chunks_equal_single_process_crops(generated_images: Path,
                                                    tmp_path: Path) -> None:
    cfg = _cfg(generated_images, "model=inceptionv4")
    output = preprocess.run(preprocess.Settings.from_config(cfg), {}, tmp_path)
    data = PreprocessedDataset(tmp_path)
    paths = sorted((generated_images / "val").iterdir())
    assert data.names == [p.name for p in paths] and len(data) == 20
    # the sidecars (.chunk_N.npy.sum: size and sha256) are folded into result.json by the cache
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        chunk_file(0), chunk_file(1), chunk_file(2), artifacts.MANIFEST]  # 7 + 7 + 6
    assert sorted(p.name for p in tmp_path.glob(".*.sum")) == [
        f".{chunk_file(i)}.sum" for i in range(3)]
    expected = np.stack([load_cropped(p, cfg.model.preprocess) for p in paths])
    np.testing.assert_array_equal(data.pixels(0, 20), expected)
    assert output.info == {"resumed_chunks": 0, "computed_chunks": 3, "workers": 2}
    # each seal, hashed piece by piece as the workers finished, is the hash of the whole file
    for index in range(3):
        seal = json.loads((tmp_path / f".{chunk_file(index)}.sum").read_text())
        chunk = tmp_path / chunk_file(index)
        assert seal == {"size": chunk.stat().st_size, "sha256": digest_file(chunk)}


def test_a_cached_image_is_a_quarter_of_the_guides_float32_file(generated_images: Path,
                                                                tmp_path: Path) -> None:
    for model, bin_bytes in (("inceptionv4", 1072812), ("alexnet", 602112)):
        out = tmp_path / model
        out.mkdir()
        cfg = _cfg(generated_images, f"model={model}", "preprocess.chunk_size=256")
        preprocess.run(preprocess.Settings.from_config(cfg), {}, out)
        (chunk,) = out.glob("chunk_*.npy")
        pixels = np.load(chunk, mmap_mode="r")
        assert pixels.dtype == np.uint8 and pixels[0].nbytes * 4 == bin_bytes
        header = chunk.stat().st_size - pixels.nbytes
        assert 0 < header <= 128  # one .npy header per chunk of up to chunk_size images


def test_resume_keeps_finished_chunks_and_redoes_a_half_filled_one(generated_images: Path,
                                                                   tmp_path: Path) -> None:
    cfg = _cfg(generated_images, "model=alexnet")
    preprocess.run(preprocess.Settings.from_config(cfg), {}, tmp_path)
    reference = PreprocessedDataset(tmp_path).pixels(0, 20).copy()
    # a killed run: chunk 1 never renamed (its .filling file half written), manifest not yet written
    os.replace(tmp_path / chunk_file(1), tmp_path / f".{chunk_file(1)}.filling")
    with open(tmp_path / f".{chunk_file(1)}.filling", "r+b") as stream:
        stream.seek(-1000, os.SEEK_END)
        stream.write(b"\xff" * 1000)
    (tmp_path / artifacts.MANIFEST).unlink()
    kept = (tmp_path / chunk_file(0)).stat().st_mtime_ns
    output = preprocess.run(preprocess.Settings.from_config(cfg), {}, tmp_path)
    assert output.info["resumed_chunks"] == 2 and output.info["computed_chunks"] == 1
    assert (tmp_path / chunk_file(0)).stat().st_mtime_ns == kept
    assert not list(tmp_path.glob(".*.filling"))
    np.testing.assert_array_equal(PreprocessedDataset(tmp_path).pixels(0, 20), reference)


def test_an_unreadable_image_fails_and_leaves_no_finished_chunk(generated_images: Path,
                                                                tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "val").mkdir(parents=True)
    names = sorted(p.name for p in (generated_images / "val").iterdir())
    for name in names:
        (root / "val" / name).write_bytes((generated_images / "val" / name).read_bytes())
    (root / "val_label.txt").write_text((generated_images / "val_label.txt").read_text())
    (root / "val" / names[9]).write_bytes(b"not a jpeg")  # in chunk 1
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Exception, match=names[9]):  # PIL says which file
        preprocess.run(preprocess.Settings.from_config(_cfg(root, "model=alexnet")), {}, out)
    assert not (out / chunk_file(1)).exists()
    assert not (out / artifacts.MANIFEST).exists()


def _evictable(folder: Path) -> bool:
    """Whether pages of files in `folder` can leave the page cache (not on a tmpfs)."""
    probe = folder / "probe"
    probe.write_bytes(b"x" * 65536)
    os.sync()
    common.evict([probe])
    return common.resident_fraction([probe]) == 0


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is Linux's")
def test_finished_chunks_leave_the_page_cache(generated_images: Path, tmp_path: Path) -> None:
    if not _evictable(tmp_path):
        pytest.skip(f"{tmp_path} keeps clean pages in memory (a tmpfs?)")
    out = tmp_path / "out"
    out.mkdir()
    preprocess.run(preprocess.Settings.from_config(_cfg(generated_images, "model=alexnet")),
                   {}, out)
    chunks = sorted(out.glob("chunk_*.npy"))
    assert len(chunks) == 3 and common.resident_fraction(chunks) == 0
    # ... and read back from the disk alike
    cropped = [load_cropped(p, run_config("model=alexnet").model.preprocess)
               for p in sorted((generated_images / "val").iterdir())]
    np.testing.assert_array_equal(PreprocessedDataset(out).pixels(0, 20), np.stack(cropped))


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is Linux's")
def test_workers_ask_the_kernel_to_read_their_images_ahead(generated_images: Path,
                                                          tmp_path: Path) -> None:
    paths = sorted((generated_images / "val").iterdir())
    os.sync()
    common.evict(paths)
    if common.resident_fraction(paths) > 0:
        pytest.skip(f"{generated_images} keeps evicted pages in memory (a tmpfs?)")
    preprocess.read_ahead([str(p) for p in paths])
    # the reads were started, not waited for: they land within moments, with nothing else
    # reading these files (resident_fraction looks with mincore, which reads nothing)
    deadline = time.monotonic() + 10
    while common.resident_fraction(paths) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert common.resident_fraction(paths) == 1


def test_read_ahead_leaves_a_missing_file_or_a_fifo_to_the_decode(tmp_path: Path) -> None:
    fifo = tmp_path / "swapped.JPEG"
    os.mkfifo(fifo)  # opened without O_NONBLOCK, this would wait for a writer forever
    preprocess.read_ahead([str(tmp_path / "missing.JPEG"), str(fifo)])
