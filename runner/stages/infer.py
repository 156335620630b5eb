"""infer: batch inference of the whole preprocessed dataset at `bs`; logits kept per chunk.

The pass is also the end-to-end measurement (`e2e_fps`), broken down as the older ModelZoo
benchmark tool did: data read, preprocess (normalize), infer, post (logits to the chunk file).
Reading and normalizing run ahead in a background thread (`runner.data.loader`), so the
end-to-end rate approaches the inference rate.
"""

from __future__ import annotations

import json
import time
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runner import artifacts, device_lock, device_pool, environment
from runner.artifacts import PreprocessedDataset, chunk_ranges, iter_logits
from runner.backends import Session, SessionSettings, backend_code, backend_for
from runner.cache import StageOutput, atomic_write_text
from runner.config import Normalization, PreprocessRecipe, RunConfig
from runner.data import aisbench_files, loader
from runner.data.transforms import normalize
from runner.measurement import Clock
from runner.settings import runtime_only

NEEDS = ("model", "dataset")
GIVES = ("logits", "e2e_json")
CODE = ("runner.data.transforms", "runner.data.loader", "runner.data.aisbench_files",
        "runner.artifacts", "runner.device_pool", "runner.device_lock")
E2E_FILE = "e2e.json"
RESULTS_DIR = "results"  # ais_bench-format files, when infer.result_format asks for them
BATCHES_PER_CHUNK = 16  # the unit of resume: a killed run keeps every finished chunk
PREFETCH_BATCHES = 2  # batches read and normalized ahead of the one being inferred
WARMUP_CALLS = 2  # untimed session.run calls on the first batch before the timed pass
PARTS = ("read", "preprocess", "infer", "post")
METHOD = {
    "timer": "time.perf_counter_ns (host wall clock)",
    "warmup": f"{WARMUP_CALLS} untimed session.run calls on the first batch, excluded",
    "e2e_fps": "images / wall seconds from asking for the first batch to writing the last chunk "
    "(session load, warm-up and the device check excluded); only chunks computed in this run",
    "read": "reading the batch's uint8 crops from the preprocess cache files (loader thread)",
    "preprocess": "normalize: /255, -mean, /std, HWC->CHW, float32 (loader thread)",
    "infer": "one synchronous session.run per batch (main thread)",
    "post": "logits to float32 host array, into the chunk; writing each finished chunk file",
    "e2e_<part>_fps": "1000 * images / total ms in that part (the old tool's throughputRate)",
    "e2e_<part>_ms": "mean ms per batch in that part (the old tool's moduleLatency)",
    "overlap": f"read + preprocess run up to {PREFETCH_BATCHES} batches ahead in a background "
    "thread, so the parts' times overlap and do not add up to the wall time",
}


@dataclass(frozen=True)
class Settings:
    bs: int
    session: SessionSettings  # how each device's session is opened
    chip: str
    devices: tuple[int, ...]  # the dataset's chunks are sharded over them
    normalization: Normalization  # applied to each batch as it is fed
    result_format: str  # none | txt | npy | bin: also ais_bench's per-image result files
    backend_code: str
    host: str  # the e2e figures are measured here, with these threads and devices
    busy_threshold: float = runtime_only(0.25)  # warn when others use the device beyond it
    lock_dir: str = runtime_only("")  # device locks: one timed job per device

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        session = SessionSettings.from_config(cfg)
        return cls(bs=cfg.bs, session=session, chip=cfg.chip.name,
                   devices=tuple(cfg.chip.devices),
                   normalization=cfg.model.preprocess.normalization(),
                   result_format=cfg.infer.result_format,
                   backend_code=backend_code(session.runtime),
                   host=environment.host_id(), busy_threshold=cfg.benchmark.busy_threshold,
                   lock_dir=str(cfg.cache_dir))


def check(settings: Settings) -> None:
    backend_for(settings.session.runtime).check(settings.session, settings.devices)


@dataclass
class PartTimes:
    """Where the time of an end-to-end pass went: totals over its batches."""

    images: int = 0
    batches: int = 0
    read_ms: float = 0.0
    preprocess_ms: float = 0.0
    infer_ms: float = 0.0
    post_ms: float = 0.0
    wall_s: float = 0.0

    @classmethod
    def combine(cls, parts: list[PartTimes], wall_s: float) -> PartTimes:
        """Totals of passes that ran concurrently (one per device) over `wall_s` seconds."""
        total = cls(wall_s=wall_s)
        for part in parts:
            for name in ("images", "batches", *(f"{p}_ms" for p in PARTS)):
                setattr(total, name, getattr(total, name) + getattr(part, name))
        return total

    def metrics(self) -> dict[str, float]:
        if not self.images or self.wall_s <= 0:
            return {}
        metrics = {"e2e_fps": self.images / self.wall_s, "e2e_wall_s": self.wall_s,
                   "e2e_images": float(self.images)}
        for part in PARTS:
            total_ms = getattr(self, f"{part}_ms")
            metrics[f"e2e_{part}_ms"] = total_ms / self.batches
            if total_ms > 0:
                metrics[f"e2e_{part}_fps"] = 1000.0 * self.images / total_ms
        return metrics


def infer_chunks(
    session: Session,
    data: PreprocessedDataset,
    recipe: PreprocessRecipe | Normalization,
    bs: int,
    chunks: list[tuple[int, int]],
    out_dir: Path,
    prefetch: int = PREFETCH_BATCHES,
    progress: tqdm | None = None,
    clock: Clock = time.perf_counter_ns,
) -> PartTimes:
    """Logits of the dataset's `chunks` ([start, stop) ranges) at `bs`, one file per chunk under
    `out_dir` (each written by rename), and the time spent in each part. One device's work:
    sharding calls it once per device with that device's session and chunks."""
    ranges = [(b, min(b + bs, stop)) for start, stop in chunks for b in range(start, stop, bs)]
    times = PartTimes()
    position = 0  # index into chunks of the one being filled
    filled: np.ndarray | None = None
    started = clock()
    feed = loader.batches(ranges, data.read, lambda pixels: normalize(pixels, recipe), prefetch,
                          clock)
    with closing(feed):
        for batch in feed:
            before_infer = clock()
            logits = session.run(batch.tensor)
            after_infer = clock()
            chunk_start, chunk_stop = chunks[position]
            out = np.asarray(logits, dtype=np.float32)
            if filled is None:
                filled = np.empty((chunk_stop - chunk_start, *out.shape[1:]), dtype=np.float32)
            filled[batch.start - chunk_start : batch.stop - chunk_start] = out
            if batch.stop == chunk_stop:
                artifacts.save_logits_chunk(out_dir, chunk_start, filled)
                filled = None
                position += 1
            after_post = clock()
            times.images += batch.stop - batch.start
            times.batches += 1
            times.read_ms += batch.read_ms
            times.preprocess_ms += batch.preprocess_ms
            times.infer_ms += (after_infer - before_infer) / 1e6
            times.post_ms += (after_post - after_infer) / 1e6
            if progress is not None:
                progress.update(batch.stop - batch.start)
    times.wall_s = (clock() - started) / 1e9
    return times


def infer_on_device(device: int, settings: Settings, model_path: Path, dataset_path: Path,
                    out_dir: Path, chunks: list[tuple[int, int]]) -> tuple[PartTimes, dict]:
    """One device's share of the chunks: its own session, warmed up, then `infer_chunks`.
    A module-level function, so `runner.device_pool` can run it in a worker process."""
    data = PreprocessedDataset(dataset_path)
    session = backend_for(settings.session.runtime).open_session(model_path, settings.session,
                                                                 device)
    recipe, bs = settings.normalization, settings.bs
    first_start, first_stop = chunks[0]
    first = normalize(data.read(first_start, min(first_start + bs, first_stop)), recipe)
    for _ in range(WARMUP_CALLS):
        session.run(first)
    device_pool.start_together()  # with several devices, their timed passes overlap
    images = sum(stop - start for start, stop in chunks)
    progress = tqdm(total=images, desc=f"infer bs={bs} device {device}", unit="img")
    times = infer_chunks(session, data, recipe, bs, chunks, out_dir, progress=progress)
    progress.close()
    return times, session.describe()


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    data = PreprocessedDataset(inputs["dataset"])
    (out_dir / artifacts.LOGITS_DIR).mkdir(exist_ok=True)
    chunks = chunk_ranges(len(data), settings.bs * BATCHES_PER_CHUNK)
    todo = [c for c in chunks if not artifacts.has_logits_chunk(out_dir, c[0])]
    resumed_images = len(data) - sum(stop - start for start, stop in todo)
    times = PartTimes()
    guard_report: dict[str, Any] | None = None
    per_device: dict[int, tuple[PartTimes, dict]] = {}
    if todo:
        # with several devices, each computes a share of the chunks, all at once
        work = {device: (settings, inputs["model"], inputs["dataset"], out_dir, share)
                for device, share in device_pool.shard(todo, list(settings.devices)).items()}
        with device_lock.guard(Path(settings.lock_dir), settings.chip,
                               settings.session.device_type, list(work),
                               settings.busy_threshold) as guard:
            per_device = device_pool.run_on_devices(infer_on_device, work)
        guard_report = guard.report()
        parts = [part for part, _ in per_device.values()]
        times = parts[0] if len(parts) == 1 else PartTimes.combine(
            parts, wall_s=max(part.wall_s for part in parts))
    index = artifacts.write_logits_index(out_dir, chunks, len(data))
    metrics = times.metrics()
    if len(per_device) > 1:
        for device, (part, _) in per_device.items():
            metrics.update({f"{k}_dev{device}": v for k, v in part.metrics().items()
                            if k == "e2e_fps"})
    if guard_report is not None and guard_report["busy_pct"] is not None:
        metrics["e2e_device_busy_pct"] = guard_report["busy_pct"]
    sessions = {str(device): facts for device, (_, facts) in per_device.items()}
    report = {
        "metrics": metrics,
        "times": asdict(times),
        "per_device_times": {str(d): asdict(part) for d, (part, _) in per_device.items()},
        "method": METHOD,
        "resumed_images": resumed_images,
        "sessions": sessions,
        "device": guard_report,
        "environment": environment.capture(environment.ChipFacts.of_session(
            settings.chip, settings.session, settings.devices)),
    }
    atomic_write_text(out_dir / E2E_FILE, json.dumps(report, indent=2))
    output = StageOutput(
        artifacts={"logits": index, "e2e_json": E2E_FILE},
        metrics=metrics,
        info={"devices": sessions, "resumed_chunks": len(chunks) - len(todo),
              "computed_chunks": len(todo)},
    )
    if settings.result_format != "none":
        start = 0
        for logits in iter_logits(out_dir / index):  # one chunk in memory at a time
            names = data.names[start : start + len(logits)]
            aisbench_files.write_results(out_dir / RESULTS_DIR, names, logits,
                                         settings.result_format)
            start += len(logits)
        output.artifacts["results"] = RESULTS_DIR
        output.info["result_files"] = f"{len(data)} x <image>_0.{settings.result_format}"
    return output
