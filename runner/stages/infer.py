"""infer: batch inference of the whole preprocessed dataset at `bs`; logits kept per chunk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runner.backends import backend_for
from runner.cache import StageOutput, atomic_save_npy, atomic_write_text, source_digest
from runner.config import RunConfig
from runner.data import aisbench_files
from runner.data.transforms import normalize
from runner.stages.preprocess import PreprocessedDataset

NEEDS = ("model", "dataset")
GIVES = ("logits",)
CODE = ("runner.data.transforms", "runner.data.aisbench_files")
LOGITS_DIR = "logits"
INDEX = "logits.json"
RESULTS_DIR = "results"  # ais_bench-format files, when infer.result_format asks for them
BATCHES_PER_CHUNK = 16  # the unit of resume: a killed run keeps every finished chunk


def key_config(cfg: RunConfig) -> dict[str, Any]:
    backend = backend_for(cfg.chip)
    recipe = cfg.model.preprocess
    return {
        "bs": cfg.bs,
        "chip": {"runtime": cfg.chip.runtime, "providers": cfg.chip.providers,
                 "precision": cfg.chip.precision},
        "normalize": {"mean": recipe.mean, "std": recipe.std},
        "backend_code": source_digest(backend.__name__),
        "result_format": cfg.infer.result_format,
    }


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    data = PreprocessedDataset(inputs["dataset"])
    session = backend_for(cfg.chip).open_session(inputs["model"], cfg.chip, cfg.chip.devices[0])
    recipe = cfg.model.preprocess
    (out_dir / LOGITS_DIR).mkdir(exist_ok=True)
    chunk_len = cfg.bs * BATCHES_PER_CHUNK
    files = []
    resumed = 0
    progress = tqdm(total=len(data), desc=f"infer bs={cfg.bs}", unit="img")
    for start in range(0, len(data), chunk_len):
        stop = min(start + chunk_len, len(data))
        name = f"{LOGITS_DIR}/{start:09d}.npy"
        files.append(name)
        if (out_dir / name).is_file():
            resumed += 1
            progress.update(stop - start)
            continue
        outputs = []
        for batch_start in range(start, stop, cfg.bs):
            batch_stop = min(batch_start + cfg.bs, stop)
            batch = normalize(data.pixels(batch_start, batch_stop), recipe)
            outputs.append(np.asarray(session.run(batch), dtype=np.float32))
            progress.update(batch_stop - batch_start)
        atomic_save_npy(out_dir / name, np.concatenate(outputs))
    progress.close()
    atomic_write_text(out_dir / INDEX, json.dumps({"files": files, "count": len(data)}))
    output = StageOutput(
        artifacts={"logits": INDEX},
        info={"session": session.describe(), "resumed_chunks": resumed,
              "computed_chunks": len(files) - resumed},
    )
    if cfg.infer.result_format != "none":
        aisbench_files.write_results(out_dir / RESULTS_DIR, data.names,
                                     load_logits(out_dir / INDEX), cfg.infer.result_format)
        output.artifacts["results"] = RESULTS_DIR
        output.info["result_files"] = f"{len(data)} x <image>_0.{cfg.infer.result_format}"
    return output


def load_logits(index_path: Path) -> np.ndarray:
    """All logits of an infer entry, (N, num_classes) float32, in dataset order."""
    index = json.loads(index_path.read_text())
    return np.concatenate([np.load(index_path.parent / name) for name in index["files"]])
