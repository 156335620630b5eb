"""infer: batch inference of the whole preprocessed dataset at `bs`; logits kept per chunk.

An artifact, not a measurement: the `e2e` stage times a pass of its own. A killed run keeps its
finished logit chunks and the next one resumes from them. With `chip.devices=[...]` the chunks
are shared out over the devices, each computing its share at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from runner import artifacts, inference
from runner.artifacts import PreprocessedDataset, chunk_ranges, iter_logits
from runner.backends import SessionSettings, backend_code, backend_for
from runner.cache import StageOutput
from runner.config import Normalization, RunConfig
from runner.data import aisbench_files
from runner.settings import runtime_only

NEEDS = ("model", "dataset")
GIVES = ("logits",)
CODE = ("runner.inference", "runner.data.transforms", "runner.data.loader",
        "runner.data.aisbench_files", "runner.artifacts", "runner.device_pool")
RESULTS_DIR = "results"  # ais_bench-format files, when infer.result_format asks for them


@dataclass(frozen=True)
class Settings:
    bs: int
    session: SessionSettings  # how each device's session is opened
    chip: str
    devices: tuple[int, ...]  # the dataset's chunks are shared out over them
    normalization: Normalization  # applied to each batch as it is fed
    result_format: str  # none | txt | npy | bin: also ais_bench's per-image result files
    backend_code: str
    busy_threshold: float = runtime_only(0.25)  # warn when others use the device beyond it
    lock_dir: str = runtime_only("")  # device locks: one job at a time per device

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        session = SessionSettings.from_config(cfg)
        return cls(bs=cfg.bs, session=session, chip=cfg.chip.name,
                   devices=tuple(cfg.chip.devices),
                   normalization=cfg.model.preprocess.normalization(),
                   result_format=cfg.infer.result_format,
                   backend_code=backend_code(session.runtime),
                   busy_threshold=cfg.benchmark.busy_threshold, lock_dir=str(cfg.cache_dir))

    def pass_spec(self) -> inference.PassSpec:
        return inference.PassSpec(self.bs, self.session, self.normalization,
                                  prefetch=inference.DEFAULT_PREFETCH)


def check(settings: Settings) -> None:
    backend_for(settings.session.runtime).check(settings.session, settings.devices)


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    data = PreprocessedDataset(inputs["dataset"])
    chunks = chunk_ranges(len(data), settings.bs * inference.BATCHES_PER_CHUNK)
    todo = [c for c in chunks if not artifacts.has_logits_chunk(out_dir, c[0])]
    result = inference.run_pass(settings.pass_spec(), settings.chip, settings.devices,
                                Path(settings.lock_dir), settings.busy_threshold,
                                inputs["model"], inputs["dataset"], out_dir, todo)
    index = artifacts.write_logits_index(out_dir, chunks, len(data))
    sessions = {str(device): facts for device, (_, facts) in result.per_device.items()}
    output = StageOutput(
        artifacts={"logits": index},
        info={"devices": sessions, "resumed_chunks": len(chunks) - len(todo),
              "computed_chunks": len(todo), "times": asdict(result.times)},
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
