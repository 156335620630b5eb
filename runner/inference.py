"""One inference pass over a preprocessed dataset, on every device of the chip at once: what the
`infer` stage (which keeps the logits) and the `e2e` stage (which measures the pass) share.

A pass is broken down as the older ModelZoo benchmark tool did: data read, preprocess
(normalize), infer, post (logits to the chunk file). Reading and normalizing run ahead in a
background thread (`runner.data.loader`), so the end-to-end rate approaches the inference rate.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from runner import artifacts, device_lock, device_pool
from runner.artifacts import PreprocessedDataset
from runner.backends import Session, SessionSettings, backend_for
from runner.config import Normalization, PreprocessRecipe
from runner.data import loader
from runner.data.transforms import normalize
from runner.measurement import Clock

BATCHES_PER_CHUNK = 16  # the unit of resume: a killed run keeps every finished chunk
DEFAULT_PREFETCH = 2  # batches read and normalized ahead of the one being inferred


def default_prefetch(device_type: str, threads: int) -> int:
    """The loader's lead when `e2e.prefetch` is not set: none where inference runs on this
    host's CPU with a thread per core, DEFAULT_PREFETCH where an accelerator leaves the CPU free.

    On the CPU the loader thread competes with the runtime's intra-op threads for the same cores:
    overlapping can save at most half the normalize time, and a parallel operator waits for its
    preempted thread; measured on 2 cores, the pipelined InceptionV4 pass was 2-5% below the
    serial one (docs/results.md, benchmarks/e2e_vs_inference)."""
    cores = os.cpu_count() or 1
    if device_type == "cpu" and (threads == 0 or threads >= cores):
        return 0
    return DEFAULT_PREFETCH


WARMUP_CALLS = 2  # untimed session.run calls on the first batch before the timed pass
PARTS = ("read", "preprocess", "infer", "post")


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
    prefetch: int = 2,
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


@dataclass(frozen=True)
class PassSpec:
    """What a pass reads, sent to each device's worker process."""

    bs: int
    session: SessionSettings
    normalization: Normalization
    prefetch: int  # batches read and normalized ahead of the one being inferred


def pass_on_device(device: int, spec: PassSpec, model_path: Path, dataset_path: Path,
                   out_dir: Path, chunks: list[tuple[int, int]]) -> tuple[PartTimes, dict]:
    """One device's share of the chunks: its own session, warmed up, then `infer_chunks`.
    A module-level function, so `runner.device_pool` can run it in a worker process."""
    data = PreprocessedDataset(dataset_path)
    session = backend_for(spec.session.runtime).open_session(model_path, spec.session, device)
    first_start, first_stop = chunks[0]
    first = normalize(data.read(first_start, min(first_start + spec.bs, first_stop)),
                      spec.normalization)
    for _ in range(WARMUP_CALLS):
        session.run(first)
    device_pool.start_together()  # with several devices, their timed passes overlap
    images = sum(stop - start for start, stop in chunks)
    progress = tqdm(total=images, desc=f"bs={spec.bs} device {device}", unit="img")
    times = infer_chunks(session, data, spec.normalization, spec.bs, chunks, out_dir,
                         prefetch=spec.prefetch, progress=progress)
    progress.close()
    return times, session.describe()


@dataclass
class PassResult:
    times: PartTimes  # all devices' parts added up, over the longest device's wall time
    per_device: dict[int, tuple[PartTimes, dict[str, Any]]] = field(default_factory=dict)
    guard: dict[str, Any] | None = None  # the device locks and busy check (device_lock)

    def metrics(self) -> dict[str, float]:
        metrics = self.times.metrics()
        if len(self.per_device) > 1:
            for device, (part, _) in self.per_device.items():
                metrics.update({f"{k}_dev{device}": v for k, v in part.metrics().items()
                                if k == "e2e_fps"})
        if self.guard is not None:
            for key, name in (("busy_pct", "e2e_device_busy_pct"),
                              ("busy_during_pct", "e2e_device_busy_during_pct"),
                              ("stolen_during_pct", "e2e_cpu_stolen_during_pct")):
                if self.guard[key] is not None:
                    metrics[name] = self.guard[key]
        return metrics


def run_pass(spec: PassSpec, chip: str, devices: tuple[int, ...], lock_dir: Path,
             busy_threshold: float, model_path: Path, dataset_path: Path, out_dir: Path,
             chunks: list[tuple[int, int]]) -> PassResult:
    """`chunks` of the dataset through the model, shared out over the devices (each computes a
    share, all at once) while holding their locks; logits into out_dir's chunk files."""
    if not chunks:
        return PassResult(PartTimes())
    (out_dir / artifacts.LOGITS_DIR).mkdir(parents=True, exist_ok=True)
    work = {device: (spec, model_path, dataset_path, out_dir, share)
            for device, share in device_pool.shard(chunks, list(devices)).items()}
    with device_lock.guard(lock_dir, chip, spec.session.device_type, list(work),
                           busy_threshold) as guard:
        per_device = device_pool.run_on_devices(pass_on_device, work)
    parts = [part for part, _ in per_device.values()]
    times = parts[0] if len(parts) == 1 else PartTimes.combine(
        parts, wall_s=max(part.wall_s for part in parts))
    return PassResult(times, per_device, guard.report())
