"""e2e: the end-to-end throughput from the preprocessed cache, measured anew on every run.

A timed pass of the pipeline a deployment runs (read the cached crops, normalize, infer, write
the logits), broken down as the older ModelZoo benchmark tool did: data read, preprocess, infer,
post. A measurement, not an artifact: like `benchmark` it is re-measured on every run unless
`cache.reuse_measurements=true`, and its logits (the `infer` stage keeps those) are dropped.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from runner import artifacts, environment, inference
from runner.artifacts import PreprocessedDataset, chunk_ranges
from runner.backends import SessionSettings, backend_code, backend_for
from runner.cache import StageOutput, atomic_write_text
from runner.config import Normalization, RunConfig
from runner.settings import runtime_only

NEEDS = ("model", "dataset")
GIVES = ("e2e_json",)
CODE = ("runner.inference", "runner.data.transforms", "runner.data.loader", "runner.artifacts",
        "runner.device_pool", "runner.device_lock")
MEASURES = True  # a figure: re-measured unless reuse is asked for (runner.pipeline)
E2E_FILE = "e2e.json"
SCRATCH = "scratch"  # the pass's logit chunks, written as a deployment writes them, then dropped
METHOD = {
    "timer": "time.perf_counter_ns (host wall clock)",
    "warmup": f"{inference.WARMUP_CALLS} untimed session.run calls on the first batch, excluded",
    "e2e_fps": "images / wall seconds from asking for the first batch to writing the last chunk "
    "(session load, warm-up and the device check excluded)",
    "read": "reading the batch's uint8 crops from the preprocess cache files (loader thread)",
    "preprocess": "normalize: /255, -mean, /std, HWC->CHW, float32 (loader thread); with "
    "model.preprocess.on_device=true none: the uint8 crops are fed as read",
    "infer": "one synchronous session.run per batch (main thread)",
    "post": "logits to float32 host array, into the chunk; writing each finished chunk file",
    "e2e_<part>_fps": "1000 * images / total ms in that part (the old tool's throughputRate)",
    "e2e_<part>_ms": "mean ms per batch in that part (the old tool's moduleLatency)",
    "overlap": "read + preprocess run up to `prefetch` batches ahead in a background thread "
    "(e2e.prefetch; by default 0 where inference runs on the host's CPU cores, else 2), "
    "so the parts' times overlap and do not add up to the wall time; 0: one thread, serial",
}


@dataclass(frozen=True)
class Settings:
    bs: int
    session: SessionSettings
    chip: str
    devices: tuple[int, ...]  # measured at once, each on its share of the images
    normalization: Normalization
    images: int | None  # the first N images of the dataset; None: all
    prefetch: int  # batches prepared ahead by the loader thread (0: serial)
    backend_code: str
    host: str  # a figure is a fact about the machine it was measured on
    busy_threshold: float = runtime_only(0.25)
    lock_dir: str = runtime_only("")

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        session = SessionSettings.from_config(cfg)
        return cls(bs=cfg.bs, session=session, chip=cfg.chip.name,
                   devices=tuple(cfg.chip.devices),
                   normalization=cfg.model.preprocess.normalization(), images=cfg.e2e.images,
                   prefetch=(inference.default_prefetch(session.device_type, session.threads)
                             if cfg.e2e.prefetch is None else cfg.e2e.prefetch),
                   backend_code=backend_code(session.runtime),
                   host=environment.host_id(), busy_threshold=cfg.benchmark.busy_threshold,
                   lock_dir=str(cfg.cache_dir))


def check(settings: Settings) -> None:
    backend_for(settings.session.runtime).check(settings.session, settings.devices)


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    data = PreprocessedDataset(inputs["dataset"])
    count = len(data) if settings.images is None else min(settings.images, len(data))
    chunks = chunk_ranges(count, settings.bs * inference.BATCHES_PER_CHUNK)
    scratch = out_dir / SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)  # an interrupted pass is measured again, whole
    spec = inference.PassSpec(settings.bs, settings.session, settings.normalization,
                              settings.prefetch)
    result = inference.run_pass(spec, settings.chip, settings.devices, Path(settings.lock_dir),
                                settings.busy_threshold, inputs["model"], inputs["dataset"],
                                scratch, chunks)
    shutil.rmtree(scratch)
    metrics = result.metrics()
    sessions = {str(device): facts for device, (_, facts) in result.per_device.items()}
    report = {
        "metrics": metrics,
        "times": asdict(result.times),
        "per_device_times": {str(d): asdict(part) for d, (part, _) in result.per_device.items()},
        "method": {**METHOD, "images": f"the first {count} of the dataset's {len(data)} images"},
        "sessions": sessions,
        "device": result.guard,
        "environment": environment.capture(environment.ChipFacts.of_session(
            settings.chip, settings.session, settings.devices)),
    }
    atomic_write_text(out_dir / E2E_FILE, json.dumps(report, indent=2))
    return StageOutput(artifacts={"e2e_json": E2E_FILE}, metrics=metrics,
                       info={"devices": sessions, "images": count,
                             "logits_dir": artifacts.LOGITS_DIR})
