"""Interrupting a real run mid-stage: the MLflow run ends KILLED, the cache holds only complete
chunks and no finished-looking entry, and the identical rerun resumes: finished stages are cache
hits and preprocess computes only the chunks it had not finished."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
from PIL import Image

from runner.config import PROJECT_ROOT
from tests.conftest import Workspace

pytestmark = pytest.mark.slow

NUM_IMAGES = 96
CHUNK = 4  # images per preprocess chunk: 24 chunks, the unit of resume


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("interrupt"))


def _large_images(root: Path) -> Path:
    """Photo-sized JPEGs (2000x1500), slow enough to decode that the stage can be caught."""
    (root / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1500, 0:2000].astype(np.float32)
    x += y / 3  # diagonal stripes
    pixels = np.stack([127 + 100 * np.sin(x / 97 + k) + rng.normal(0, 20, x.shape)
                       for k in range(3)], axis=-1)
    first = root / "val" / "img_1.JPEG"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(first, quality=92)
    names = [f"img_{i}.JPEG" for i in range(1, NUM_IMAGES + 1)]
    for name in names[1:]:
        shutil.copyfile(first, root / "val" / name)
    (root / "val_label.txt").write_text("".join(f"{n} {i % 1000}\n" for i, n in enumerate(names)))
    return root


def _partial_chunks(cache: Path) -> list[Path]:
    return sorted(cache.glob("preprocess/*.partial/chunk_*.npy"))


@pytest.mark.parametrize("how", ["ctrl-c to the process group", "sigterm to the runner"])
def test_interrupted_run_ends_killed_keeps_complete_chunks_and_resumes(
    space: Workspace, tmp_path: Path, how: str
) -> None:
    args = ["stage=accuracy", "model.arch=torchvision.models.squeezenet1_1",
            "model.weights=random", "model.weights_checksum=null", "bs=8",
            f"dataset.root={_large_images(tmp_path / 'data')}",
            f"preprocess.chunk_size={CHUNK}", "preprocess.workers=1"]
    runs_before = len(space.runs())
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        runner = subprocess.Popen(
            [sys.executable, "-m", "runner", *args, *space.overrides()], cwd=PROJECT_ROOT,
            stdout=out, stderr=err, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 400
            while len(_partial_chunks(space.cache)) < 2:  # mid-stage: some chunks are done
                assert runner.poll() is None, (tmp_path / "err.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "preprocess never started"
                time.sleep(0.02)
            if how.startswith("ctrl-c"):
                sent = signal.SIGINT
                os.killpg(runner.pid, sent)  # what a terminal does on Ctrl-C
            else:
                sent = signal.SIGTERM
                runner.send_signal(sent)  # what kill or a batch scheduler does
            status = runner.wait(timeout=120)
        finally:
            if runner.poll() is None:
                os.killpg(runner.pid, signal.SIGKILL)
                runner.wait()

    stderr = (tmp_path / "err.txt").read_text()
    assert status == 128 + sent, stderr[-3000:]
    assert f"runner: interrupted by {sent.name}: finished stages and chunks are kept" in stderr
    assert "Traceback" not in stderr
    runs = space.runs()
    assert len(runs) == runs_before + 1
    assert runs[-1].info.status == "KILLED"
    assert runs[-1].data.tags["error"].startswith("KeyboardInterrupt")

    # the cache: complete chunks in the .partial folder, nothing half-written, nothing finished
    (partial,) = {chunk.parent for chunk in _partial_chunks(space.cache)}
    assert not partial.with_name(partial.name.removesuffix(".partial")).exists()
    kept = _partial_chunks(space.cache)
    assert 2 <= len(kept) < NUM_IMAGES // CHUNK
    assert all(np.load(c).shape == (CHUNK, 224, 224, 3) for c in kept)
    # each chunk with its sidecar (size and sha256, checked when it is resumed), nothing else
    assert sorted(p.name for p in partial.iterdir()) == sorted(
        [c.name for c in kept] + [f".{c.name}.sum" for c in kept])

    space.run(*args)
    rerun = space.runs()[-1]
    assert rerun.info.status == "FINISHED"
    cache = space.cache_states(rerun)
    assert (cache["export"], cache["convert"], cache["preprocess"]) == ("hit", "hit", "miss")
    entry = space.entry("preprocess", rerun)
    assert entry == partial.with_name(partial.name.removesuffix(".partial"))
    info = json.loads((entry / "result.json").read_text())["info"]
    assert info["resumed_chunks"] == len(kept)
    assert info["computed_chunks"] == NUM_IMAGES // CHUNK - len(kept)
    logged = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=rerun.info.run_id, artifact_path="stages/preprocess/info.json",
        tracking_uri=space.tracking_uri)).read_text())
    assert logged["resumed_chunks"] == len(kept)
    assert rerun.data.metrics["num_images"] == NUM_IMAGES
    assert "top1" in rerun.data.metrics


def test_kill_9_mid_preprocess_leaves_no_worker_and_the_rerun_does_not_hang(
    space: Workspace, tmp_path: Path
) -> None:
    """kill -9 runs no handler: the decode workers must die with the runner (they held the
    stage's lock, so the identical rerun waited forever without a word)."""
    args = ["stage.stages=[preprocess]", "model.arch=torchvision.models.squeezenet1_1",
            "model.weights=random", "model.weights_checksum=null",
            f"dataset.root={_large_images(tmp_path / 'data')}",
            f"preprocess.chunk_size={CHUNK}", "preprocess.workers=2"]
    runner = subprocess.Popen([sys.executable, "-m", "runner", *args, *space.overrides()],
                              cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 400
        while len(_partial_chunks(space.cache)) < 1:
            assert runner.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        workers = psutil.Process(runner.pid).children(recursive=True)
        assert workers
        runner.kill()
        runner.wait(timeout=30)
        _gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"decode workers outlived the killed runner: {alive}"
    finally:
        for process in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    started = time.monotonic()
    result = space.run(*args, timeout=400)
    assert "Traceback" not in result.stderr
    assert space.runs()[-1].info.status == "FINISHED"
    assert time.monotonic() - started < 400
