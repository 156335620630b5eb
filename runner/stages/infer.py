"""infer: batch inference of the whole preprocessed dataset at `bs`; logits kept per chunk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runner import devices
from runner.backends import backend_for
from runner.cache import StageOutput, atomic_save_npy, atomic_write_text, source_digest
from runner.config import RunConfig
from runner.data.transforms import normalize
from runner.stages.preprocess import PreprocessedDataset

NEEDS = ("model", "dataset")
GIVES = ("logits",)
CODE = ("runner.data.transforms",)
LOGITS_DIR = "logits"
INDEX = "logits.json"
BATCHES_PER_CHUNK = 16  # the unit of resume: a killed run keeps every finished chunk


def key_config(cfg: RunConfig) -> dict[str, Any]:
    backend = backend_for(cfg.chip)
    recipe = cfg.model.preprocess
    return {
        "bs": cfg.bs,
        "chip": {"runtime": cfg.chip.runtime, "providers": cfg.chip.providers,
                 "precision": cfg.chip.precision, "device_type": cfg.chip.device_type,
                 "channels_last": cfg.chip.channels_last},
        "normalize": {"mean": recipe.mean, "std": recipe.std},
        "backend_code": source_digest(backend.__name__),
    }


def chunk_name(start: int) -> str:
    return f"{LOGITS_DIR}/{start:09d}.npy"


def infer_chunks(device: int, cfg: RunConfig, model_path: Path, dataset_path: Path,
                 out_dir: Path, chunks: list[tuple[int, int]]) -> dict[str, Any]:
    """Logits of the chunks [start, stop) on one device, each saved as it is finished."""
    data = PreprocessedDataset(dataset_path)
    session = backend_for(cfg.chip).open_session(model_path, cfg.chip, device)
    recipe = cfg.model.preprocess
    images = sum(stop - start for start, stop in chunks)
    progress = tqdm(total=images, desc=f"infer bs={cfg.bs} device {device}", unit="img")
    started = time.perf_counter()
    for start, stop in chunks:
        outputs = []
        for batch_start in range(start, stop, cfg.bs):
            batch_stop = min(batch_start + cfg.bs, stop)
            batch = normalize(data.pixels(batch_start, batch_stop), recipe)
            outputs.append(np.asarray(session.run(batch), dtype=np.float32))
            progress.update(batch_stop - batch_start)
        atomic_save_npy(out_dir / chunk_name(start), np.concatenate(outputs))
    progress.close()
    seconds = time.perf_counter() - started
    return {"session": session.describe(), "images": images, "seconds": seconds,
            "images_per_s": images / seconds,
            "timed_span": "reading, normalizing, inference and saving of the device's chunks"}


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    count = len(PreprocessedDataset(inputs["dataset"]))
    (out_dir / LOGITS_DIR).mkdir(exist_ok=True)
    chunk_len = cfg.bs * BATCHES_PER_CHUNK
    chunks = [(start, min(start + chunk_len, count)) for start in range(0, count, chunk_len)]
    todo = [c for c in chunks if not (out_dir / chunk_name(c[0])).is_file()]
    # with several devices, each computes a share of the chunks, all at once
    work = {device: (cfg, inputs["model"], inputs["dataset"], out_dir, share)
            for device, share in devices.shard(todo, cfg.chip.devices).items()}
    per_device = devices.run_on_devices(infer_chunks, work)
    files = [chunk_name(start) for start, _ in chunks]
    atomic_write_text(out_dir / INDEX, json.dumps({"files": files, "count": count}))
    return StageOutput(
        artifacts={"logits": INDEX},
        info={"devices": {str(d): facts for d, facts in per_device.items()},
              "resumed_chunks": len(chunks) - len(todo), "computed_chunks": len(todo)},
    )


def load_logits(index_path: Path) -> np.ndarray:
    """All logits of an infer entry, (N, num_classes) float32, in dataset order."""
    index = json.loads(index_path.read_text())
    return np.concatenate([np.load(index_path.parent / name) for name in index["files"]])
