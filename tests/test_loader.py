"""The pipelined loader and the streamed infer/evaluate path, on real JPEGs preprocessed by the
real preprocess stage and a small real ONNX model run by ONNX Runtime."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from runner import accuracy, artifacts, inference
from runner.artifacts import PreprocessedDataset
from runner.backends import SessionSettings, backend_for
from runner.config import RunConfig
from runner.data import loader
from runner.data.transforms import normalize
from runner.errors import RunnerError
from runner.stages import e2e, infer, preprocess
from tests.conftest import run_config

CLASSES = 10


def tiny_classifier(path: Path, seed: int = 0) -> Path:
    """(N, 3, H, W) -> (N, 10): spatial mean per channel, then a dense layer (opset 11)."""
    weights = np.random.default_rng(seed).standard_normal((3, CLASSES)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "weights"], ["output"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", CLASSES])],
        initializer=[helper.make_tensor("weights", TensorProto.FLOAT, weights.shape,
                                        weights.flatten().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, generated_images: Path
          ) -> tuple[RunConfig, Path, Path]:
    """A run config, a preprocess entry of the 20 generated JPEGs (32 px crops, chunks of 7
    images, so reads cross chunk files) and a tiny model."""
    root = tmp_path_factory.mktemp("small")
    cfg = run_config(f"dataset.root={generated_images}", f"paths.cache_dir={root / 'cache'}",
                     "model.preprocess.resize=40", "model.preprocess.crop=32",
                     "preprocess.chunk_size=7", "preprocess.workers=1", "bs=4")
    entry = root / "preprocess"
    entry.mkdir()
    preprocess.run(preprocess.Settings.from_config(cfg), {}, entry)
    return cfg, entry, tiny_classifier(root / "tiny.onnx")


def test_read_gives_the_same_crops_as_the_memory_map(small) -> None:
    _, entry, _ = small
    data = PreprocessedDataset(entry)
    assert len(data) == 20
    for start, stop in [(0, 20), (0, 7), (5, 9), (6, 8), (7, 14), (13, 20), (19, 20)]:
        read = data.read(start, stop)
        assert read.flags.c_contiguous and read.shape == (stop - start, 32, 32, 3)
        np.testing.assert_array_equal(read, data.pixels(start, stop))


def test_a_truncated_chunk_is_reported_not_read_as_zeros(small, tmp_path: Path) -> None:
    _, entry, _ = small
    copy = tmp_path / "entry"
    copy.mkdir()
    for path in entry.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    data = PreprocessedDataset(copy)
    chunk = copy / preprocess.chunk_file(1)
    chunk.write_bytes(chunk.read_bytes()[:-100])
    with pytest.raises(RunnerError, match=r"chunk_000001\.npy is truncated"):
        data.read(7, 14)


def _ranges(count: int, bs: int) -> list[tuple[int, int]]:
    return [(s, min(s + bs, count)) for s in range(0, count, bs)]


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_batches_come_in_order_and_equal_the_serial_normalization(small, prefetch: int) -> None:
    cfg, entry, _ = small
    data = PreprocessedDataset(entry)
    recipe = cfg.model.preprocess
    got = list(loader.batches(_ranges(20, 6), data.read, lambda p: normalize(p, recipe),
                              prefetch))
    assert [(b.start, b.stop) for b in got] == [(0, 6), (6, 12), (12, 18), (18, 20)]
    for batch in got:
        np.testing.assert_array_equal(batch.tensor,
                                      normalize(data.pixels(batch.start, batch.stop), recipe))
        assert batch.read_ms >= 0 and batch.preprocess_ms >= 0
    assert not [t for t in threading.enumerate() if t.name == "runner-loader"]


def test_an_error_in_the_loader_thread_reaches_the_consumer() -> None:
    def read(start: int, stop: int) -> np.ndarray:
        if start == 8:
            raise OSError("disk gone")
        return np.full((stop - start, 2), start, dtype=np.uint8)

    received = []
    with pytest.raises(OSError, match="disk gone"):
        for batch in loader.batches(_ranges(20, 4), read, lambda p: p, prefetch=2):
            received.append(batch.start)
    assert received == [0, 4]
    assert not [t for t in threading.enumerate() if t.name == "runner-loader"]


def test_the_loader_reads_at_most_prefetch_batches_ahead_and_stops_when_closed() -> None:
    reads: list[int] = []

    def read(start: int, stop: int) -> np.ndarray:
        reads.append(start)
        return np.zeros((stop - start, 2), dtype=np.uint8)

    feed = loader.batches(_ranges(100, 1), read, lambda p: p, prefetch=2)
    first = next(feed)
    time.sleep(0.3)  # ample time for an unbounded producer to run far ahead
    # one batch handed out, two waiting in the queue, one loaded and waiting for room
    assert first.start == 0 and len(reads) <= 4
    feed.close()
    assert not [t for t in threading.enumerate() if t.name == "runner-loader"]
    assert len(reads) <= 4


def test_infer_chunks_writes_one_file_per_chunk_with_the_model_logits(small,
                                                                      tmp_path: Path) -> None:
    cfg, entry, model = small
    data = PreprocessedDataset(entry)
    session = backend_for(cfg.chip.runtime).open_session(model, SessionSettings.from_config(cfg), 0)
    recipe = cfg.model.preprocess
    reference = session.run(normalize(data.pixels(0, 20), recipe))
    chunks = [(0, 6), (6, 12), (12, 18), (18, 20)]  # bs 4: batches cross no chunk boundary
    results = {}
    for prefetch in (0, 2):
        out = tmp_path / f"prefetch{prefetch}"
        (out / artifacts.LOGITS_DIR).mkdir(parents=True)
        times = inference.infer_chunks(session, data, recipe, 4, chunks, out, prefetch=prefetch)
        # (each with its .<name>.sum sidecar: size and sha256, checked when it is resumed)
        files = sorted(p for p in (out / artifacts.LOGITS_DIR).iterdir() if p.suffix == ".npy"
                       and not p.name.startswith("."))
        assert [f.name for f in files] == [f"{s:09d}.npy" for s, _ in chunks]
        results[prefetch] = np.concatenate([np.load(f) for f in files])
        assert (times.images, times.batches) == (20, 2 + 2 + 2 + 1)
        assert min(times.read_ms, times.preprocess_ms, times.infer_ms, times.post_ms) > 0
        assert times.wall_s > 0
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_allclose(results[2], reference, rtol=1e-5, atol=1e-6)


def test_the_infer_stage_resumes_and_claims_no_figure(small, tmp_path: Path) -> None:
    cfg, entry, model = small
    cfg.bs = 1  # chunks of 16 images: (0, 16) and (16, 20)
    inputs = {"model": model, "dataset": entry}
    out = tmp_path / "infer"
    out.mkdir()
    first = infer.run(infer.Settings.from_config(cfg), inputs, out)
    assert first.metrics == {}  # logits are an artifact; the e2e stage measures a pass
    assert first.info["times"]["images"] == 20
    complete = artifacts.load_logits(out / artifacts.LOGITS_INDEX)
    assert complete.shape == (20, CLASSES)

    (out / artifacts.logits_chunk_name(16)).unlink()  # as if killed while computing the last chunk
    resumed = infer.run(infer.Settings.from_config(cfg), inputs, out)
    assert resumed.info["resumed_chunks"] == 1 and resumed.info["computed_chunks"] == 1
    assert resumed.info["times"]["images"] == 4
    np.testing.assert_array_equal(artifacts.load_logits(out / artifacts.LOGITS_INDEX), complete)
    finished = infer.run(infer.Settings.from_config(cfg), inputs, out)
    assert finished.info["computed_chunks"] == 0


def test_the_e2e_stage_measures_a_whole_pass_and_keeps_no_logits(small, tmp_path: Path) -> None:
    cfg, entry, model = small
    cfg.bs = 1
    out = tmp_path / "e2e"
    out.mkdir()
    first = e2e.run(e2e.Settings.from_config(cfg), {"model": model, "dataset": entry}, out)
    report = json.loads((out / e2e.E2E_FILE).read_text())
    assert first.metrics["e2e_images"] == 20
    assert first.metrics["e2e_fps"] == pytest.approx(20 / first.metrics["e2e_wall_s"])
    assert report["metrics"] == first.metrics
    assert report["device"]["locks"][0]["path"].endswith("locks/cpu-device0.lock")
    assert report["device"]["busy_during_pct"] is not None
    assert set(report["method"]) >= {"timer", "warmup", "e2e_fps", *inference.PARTS}
    for part in inference.PARTS:  # mean per batch of 1 image
        assert first.metrics[f"e2e_{part}_ms"] == pytest.approx(
            report["times"][f"{part}_ms"] / 20)
    assert sorted(p.name for p in out.iterdir()) == [e2e.E2E_FILE]  # the pass's logits dropped
    cfg.e2e.images = 7
    part = e2e.run(e2e.Settings.from_config(cfg), {"model": model, "dataset": entry}, out)
    assert part.metrics["e2e_images"] == 7


def test_part_times_metrics_are_the_old_tools_rates() -> None:
    times = inference.PartTimes(images=100, batches=10, read_ms=50.0, preprocess_ms=100.0,
                            infer_ms=1000.0, post_ms=20.0, wall_s=1.25)
    metrics = times.metrics()
    assert metrics["e2e_fps"] == pytest.approx(80.0)
    assert metrics["e2e_infer_fps"] == pytest.approx(100.0)  # 1000 * 100 images / 1000 ms
    assert metrics["e2e_read_fps"] == pytest.approx(2000.0)
    assert metrics["e2e_preprocess_ms"] == pytest.approx(10.0)  # per batch
    assert metrics["e2e_post_ms"] == pytest.approx(2.0)
    both = inference.PartTimes.combine([times, times], wall_s=1.25)
    assert both.metrics()["e2e_fps"] == pytest.approx(160.0)
    assert both.metrics()["e2e_infer_fps"] == pytest.approx(100.0)
    assert inference.PartTimes().metrics() == {}


def test_streamed_accuracy_equals_the_whole_array_accuracy() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((53, 1001)).astype(np.float32)
    labels = rng.integers(0, 1000, size=53)
    logits[np.arange(0, 53, 3), labels[::3] + 1] += 10.0  # some top-1 hits, offset 1
    whole = accuracy.topk_accuracy(logits, labels, class_offset=1)
    chunks = iter([logits[:16], logits[16:17], logits[17:48], logits[48:]])
    assert accuracy.streamed_topk_accuracy(chunks, labels, class_offset=1) == whole
    assert whole[0] >= 100 * 18 / 53


@pytest.mark.parametrize("cut", [40, 60])
def test_logits_that_do_not_cover_the_dataset_are_an_error(cut: int) -> None:
    logits = np.zeros((cut, 10), dtype=np.float32)
    with pytest.raises(RunnerError, match=r"the dataset has 53: recompute with cache\.force"):
        accuracy.streamed_topk_accuracy(iter([logits[:20], logits[20:]]),
                                        np.zeros(53, dtype=np.int64), class_offset=0)


def test_normalize_by_lookup_equals_torch_for_every_uint8_value() -> None:
    import torch

    from runner.config import PreprocessRecipe

    # every value 0..255 in every channel, and a strided (non-contiguous) input
    values = np.arange(256, dtype=np.uint8)
    pixels = np.stack([np.roll(values, 7 * c) for c in range(3)], axis=-1).reshape(2, 8, 16, 3)
    for recipe in (PreprocessRecipe(), PreprocessRecipe(mean=[0.5] * 3, std=[0.5] * 3)):
        expected = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
        expected = (expected - torch.tensor(recipe.mean).view(1, 3, 1, 1)) / torch.tensor(
            recipe.std).view(1, 3, 1, 1)
        np.testing.assert_array_equal(normalize(pixels, recipe), expected.numpy())
        np.testing.assert_array_equal(normalize(pixels[:, :, ::2], recipe),
                                      expected.numpy()[:, :, :, ::2])


def test_the_loader_runs_ahead_only_where_the_cpu_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """e2e.prefetch unset: serial where inference fills the host's cores, pipelined otherwise."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert inference.default_prefetch("cpu", 0) == 0  # the runtime takes every core
    assert inference.default_prefetch("cpu", 4) == 0
    assert inference.default_prefetch("cpu", 2) == inference.DEFAULT_PREFETCH
    assert inference.default_prefetch("cuda", 0) == inference.DEFAULT_PREFETCH
    assert inference.default_prefetch("npu", 0) == inference.DEFAULT_PREFETCH
    assert e2e.Settings.from_config(run_config()).prefetch == 0  # chip=cpu, default threads
    assert e2e.Settings.from_config(run_config("e2e.prefetch=3")).prefetch == 3
