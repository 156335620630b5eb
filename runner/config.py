"""The typed schema of a run.

Hydra composes `conf/` into a DictConfig; the dataclasses below are registered as its schema so a
misspelt key or a value of the wrong type is rejected while composing, and `validate` turns the
result into these objects, whose `__post_init__` checks the values a type cannot express (bs > 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from runner.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]

STAGE_NAMES = ("export", "convert", "preprocess", "infer", "parity", "evaluate", "benchmark",
               "score")
# what a run does when no stage preset says otherwise (`score` reads results made elsewhere)
DEFAULT_STAGES = ("export", "convert", "preprocess", "infer", "parity", "evaluate", "benchmark")
RUNTIMES = ("onnxruntime", "torch", "ais_bench")
PRECISIONS = ("fp32", "fp16")
# the kinds of device each runtime can drive
DEVICE_TYPES = {"onnxruntime": ("cpu", "cuda"), "torch": ("cpu", "cuda"), "ais_bench": ("npu",)}
# `model.arch` is imported and called: only callables of these packages, unless widened with
# security.extra_arch_prefixes
BUILTIN_ARCH_PREFIXES = ("torchvision.models.", "runner.models.")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")


def _check_positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}={value!r} must be > 0")


def arch_allowed(name: str, prefixes: tuple[str, ...] | list[str],
                 allow_private: bool = False) -> bool:
    """Whether dotted `name` lies inside one of the packages `prefixes` ("pkg.sub." or "pkg.sub")
    and, unless `allow_private`, names no private or dunder part on the way."""
    parts = name.split(".")
    if not all(parts) or (not allow_private and any(p.startswith("_") for p in parts)):
        return False
    packages = [p.rstrip(".") for p in prefixes]
    return any(name.startswith(f"{package}.") for package in packages if package)


@dataclass
class PreprocessRecipe:
    """How one image becomes a model input; the same recipe serves every model."""

    resize: int = 256  # shorter side, longer side int(resize * long / short)
    interpolation: str = "bilinear"
    crop: int = 224
    # torchvision CenterCrop rounds the offset half-to-even; the InceptionV4 guide truncates
    crop_offset: str = "round"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    def __post_init__(self) -> None:
        _check_positive("model.preprocess.resize", self.resize)
        _check_positive("model.preprocess.crop", self.crop)
        if self.crop > self.resize:
            raise ConfigError(
                f"model.preprocess.crop={self.crop} is larger than resize={self.resize}"
            )
        _check_choice("model.preprocess.interpolation", self.interpolation,
                      ("nearest", "bilinear", "bicubic"))
        _check_choice("model.preprocess.crop_offset", self.crop_offset, ("round", "floor"))
        for key, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3:
                raise ConfigError(f"model.preprocess.{key} needs 3 values (R, G, B), got {values}")
        if any(s == 0 for s in self.std):
            raise ConfigError(f"model.preprocess.std={self.std} contains 0")


@dataclass
class ModelConfig:
    name: str = MISSING
    # import path of a callable returning an nn.Module (e.g. torchvision.models.alexnet)
    arch: str = MISSING
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    # the official URL (default), a local path, or "random" (seeded init, for offline runs)
    weights: str = "random"
    # "md5:<hex>" or "sha256:<hex or prefix>"; checked after every download
    weights_checksum: str | None = None
    num_classes: int = 1000
    class_offset: int = 0  # 1 for "imagenet+background" models: label + 1 is the class index
    input_name: str = "input"
    output_name: str = "output"
    opset: int = 11
    preprocess: PreprocessRecipe = field(default_factory=PreprocessRecipe)

    def __post_init__(self) -> None:
        _check_positive("model.num_classes", self.num_classes)
        if self.class_offset < 0 or self.class_offset >= self.num_classes:
            raise ConfigError(f"model.class_offset={self.class_offset} is out of range")
        if self.weights_checksum is not None:
            algo, _, digest = self.weights_checksum.partition(":")
            if algo not in ("md5", "sha256") or not digest:
                raise ConfigError(
                    f"model.weights_checksum={self.weights_checksum!r}: write md5:<hex> or "
                    "sha256:<hex>"
                )

    @property
    def input_size(self) -> int:
        return self.preprocess.crop


@dataclass
class SyntheticConfig:
    """Generated JPEGs, so the whole pipeline runs on any machine without ImageNet."""

    num_images: int = 64
    seed: int = 0


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str | None = None  # folder holding `images` and `labels`
    images: str = "val"  # folder of images, relative to root
    labels: str = "val_label.txt"  # "<file name> <0-based class>" per line, relative to root
    limit: int | None = None  # first N images (natural sort order) only
    # what to do with images that have no label or labels without an image: stop or skip
    on_mismatch: str = "stop"
    synthetic: SyntheticConfig | None = None

    def __post_init__(self) -> None:
        if self.limit is not None:
            _check_positive("dataset.limit", self.limit)
        _check_choice("dataset.on_mismatch", self.on_mismatch, ("stop", "skip"))


@dataclass
class ChipConfig:
    name: str = MISSING
    runtime: str = "onnxruntime"
    device_type: str = "cpu"  # cpu | cuda | npu
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    precision: str = "fp32"
    threads: int = 0  # intra-op threads per device; 0 lets the runtime decide
    # several ids: the dataset is sharded and the benchmark runs one worker per device at once
    devices: list[int] = field(default_factory=lambda: [0])
    soc_version: str | None = None  # Ascend: e.g. Ascend310P3, or auto (read from npu-smi info)
    atc_options: dict[str, Any] = field(default_factory=dict)  # extra atc --key=value options
    # Ascend: one OM for these batch sizes (atc --dynamic_batch_size) instead of one per bs
    dynamic_batch_sizes: list[int] = field(default_factory=list)
    channels_last: bool = False

    def __post_init__(self) -> None:
        _check_choice("chip.runtime", self.runtime, RUNTIMES)
        _check_choice("chip.device_type", self.device_type, DEVICE_TYPES[self.runtime])
        _check_choice("chip.precision", self.precision, PRECISIONS)
        if self.threads < 0:
            raise ConfigError(f"chip.threads={self.threads} must be >= 0")
        if not self.devices:
            raise ConfigError("chip.devices is empty: give at least one device id, e.g. [0]")
        if len(set(self.devices)) != len(self.devices) or min(self.devices) < 0:
            raise ConfigError(f"chip.devices={self.devices} must be distinct ids >= 0")
        if self.runtime == "ais_bench" and not self.soc_version:
            raise ConfigError(
                f"chip.soc_version is not set for chip={self.name}: give the atc soc_version "
                "(e.g. Ascend310P3) or auto to read it from npu-smi info"
            )
        if self.soc_version and not (
            self.soc_version == "auto" or self.soc_version.startswith("Ascend")
        ):
            raise ConfigError(
                f"chip.soc_version={self.soc_version!r} is not an atc soc_version "
                "(Ascend310, Ascend310P3, Ascend910B3, ...) or auto"
            )
        if self.dynamic_batch_sizes:
            if self.runtime != "ais_bench":
                raise ConfigError(
                    f"chip.dynamic_batch_sizes is for Ascend OM models (runtime ais_bench), "
                    f"not runtime {self.runtime}: remove it"
                )
            sizes = self.dynamic_batch_sizes
            distinct = len(set(sizes)) == len(sizes)
            if not (distinct and 2 <= len(sizes) <= 100 and min(sizes) >= 1):
                raise ConfigError(
                    f"chip.dynamic_batch_sizes={sizes} must be 2 to 100 distinct sizes >= 1 "
                    "(atc --dynamic_batch_size)"
                )


@dataclass
class StageConfig:
    name: str = MISSING
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))

    def __post_init__(self) -> None:
        for name in self.stages:
            _check_choice("stage.stages", name, STAGE_NAMES)
        if not self.stages:
            raise ConfigError("stage.stages is empty: name at least one stage")


@dataclass
class PathsConfig:
    root: str = str(PROJECT_ROOT)
    cache_dir: str = MISSING


@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    artifact_location: str = MISSING
    experiment: str = "runner"


@dataclass
class CacheConfig:
    # stages to recompute even when a finished entry exists; "all" for every stage
    force: list[str] = field(default_factory=list)
    # how a cache hit is checked against the sizes and sha256 recorded when it was written:
    # "size" (every file's size; files up to 1 MiB re-hashed) or "full" (every file re-hashed)
    verify: str = "size"

    def __post_init__(self) -> None:
        for name in self.force:
            _check_choice("cache.force", name, (*STAGE_NAMES, "all"))
        _check_choice("cache.verify", self.verify, ("size", "full"))


@dataclass
class PreprocessRunConfig:
    workers: int = 0  # processes decoding images; 0 = one per core
    chunk_size: int = 256  # images per cache chunk: the unit of resume

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"preprocess.workers={self.workers} must be >= 0")
        _check_positive("preprocess.chunk_size", self.chunk_size)


RESULT_FORMATS = ("txt", "npy", "bin")  # ais_bench's --outfmt, lower case


@dataclass
class InferConfig:
    # also write one ais_bench result file per image (`<stem>_0.<fmt>`) into the infer entry
    result_format: str = "none"

    def __post_init__(self) -> None:
        _check_choice("infer.result_format", self.result_format, ("none", *RESULT_FORMATS))


@dataclass
class ParityTolerance:
    """How far the converted model may stray from PyTorch on the evaluation tensors."""

    max_abs_diff: float  # largest |logit difference| over every image and class
    min_top1_agreement: float  # fraction of images whose top-1 class must agree
    max_topk_delta: float  # largest |top-1| and |top-5| accuracy difference, percentage points

    def check(self, prefix: str) -> None:
        for key in ("max_abs_diff", "max_topk_delta"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{prefix}.{key}={getattr(self, key)} must be >= 0")
        if not 0 <= self.min_top1_agreement <= 1:
            raise ConfigError(
                f"{prefix}.min_top1_agreement={self.min_top1_agreement} must be in 0..1"
            )


@dataclass
class ParityTolerances:
    fp32: ParityTolerance = field(default_factory=lambda: ParityTolerance(1e-3, 0.999, 0.1))
    fp16: ParityTolerance = field(default_factory=lambda: ParityTolerance(0.1, 0.99, 0.5))


@dataclass
class ParityConfig:
    tolerance: ParityTolerances = field(default_factory=ParityTolerances)
    worst: int = 5  # images named in the report and in the error message

    def __post_init__(self) -> None:
        for precision in PRECISIONS:
            getattr(self.tolerance, precision).check(f"parity.tolerance.{precision}")
        _check_positive("parity.worst", self.worst)


@dataclass
class ScoreConfig:
    """`stage=score`: top-k of ais_bench result files made elsewhere (e.g. on an NPU host)."""

    results: str | None = None  # folder of `<image stem>_0.txt|.npy|.bin` files
    format: str = "auto"  # the files' format; auto: the one format present

    def __post_init__(self) -> None:
        _check_choice("score.format", self.format, ("auto", *RESULT_FORMATS))


@dataclass
class BenchmarkConfig:
    """Test settings of the pure-inference benchmark, kept apart from the system under test."""

    input: str = "random"  # random | zero, like ais_bench's --pure_data_type
    warmup_iters: int = 10
    warmup_min_s: float = 0.5
    min_iters: int = 100
    min_duration_s: float = 3.0
    max_duration_s: float = 60.0
    windows: int = 5  # the timed iterations are split into this many windows ...
    stable_windows: int = 3  # ... and the last ones must agree within max_spread
    max_spread: float = 0.10
    max_trials: int = 3
    repeats: int = 3  # timed runs after one warm-up; their spread is throughput_cv
    # warn when, just before timing, others use more than this fraction of the device
    busy_threshold: float = 0.25

    def __post_init__(self) -> None:
        _check_choice("benchmark.input", self.input, ("random", "zero"))
        if self.warmup_iters < 0:
            raise ConfigError(f"benchmark.warmup_iters={self.warmup_iters} must be >= 0")
        _check_positive("benchmark.min_iters", self.min_iters)
        _check_positive("benchmark.windows", self.windows)
        _check_positive("benchmark.max_trials", self.max_trials)
        _check_positive("benchmark.repeats", self.repeats)
        if self.min_duration_s < 0 or self.max_duration_s <= 0:
            raise ConfigError(
                f"benchmark.min_duration_s={self.min_duration_s} must be >= 0 and "
                f"benchmark.max_duration_s={self.max_duration_s} > 0"
            )
        if not 0 <= self.busy_threshold <= 1:
            raise ConfigError(
                f"benchmark.busy_threshold={self.busy_threshold} must be a fraction in 0..1"
            )
        if not 1 <= self.stable_windows <= self.windows:
            raise ConfigError(
                f"benchmark.stable_windows={self.stable_windows} must be in 1..windows"
            )


@dataclass
class SecurityConfig:
    """What a run may import beyond the safe defaults: widened only by saying so."""

    # packages whose callables model.arch may name, besides torchvision.models and runner.models
    extra_arch_prefixes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for prefix in self.extra_arch_prefixes:
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\.?", prefix):
                raise ConfigError(
                    f"security.extra_arch_prefixes: {prefix!r} is not a package path such as "
                    "mypkg.models"
                )


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    chip: ChipConfig = MISSING
    stage: StageConfig = MISSING
    bs: int = 16
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    preprocess: PreprocessRunConfig = field(default_factory=PreprocessRunConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    debug: bool = False  # print the traceback of an error, not only its one-line message

    def __post_init__(self) -> None:
        if self.bs <= 0:
            raise ConfigError(f"bs={self.bs} must be a positive integer, e.g. bs=16")
        sizes = self.chip.dynamic_batch_sizes
        if sizes and self.bs not in sizes:
            raise ConfigError(
                f"bs={self.bs} is not one of chip.dynamic_batch_sizes={sizes}: add it there"
            )
        allowed = (*BUILTIN_ARCH_PREFIXES, *self.security.extra_arch_prefixes)
        if not arch_allowed(self.model.arch, allowed):
            raise ConfigError(
                f"model.arch={self.model.arch!r} is outside the allowed packages "
                f"({', '.join(allowed)}): to trust another package, pass "
                "security.extra_arch_prefixes=[its.prefix]"
            )

    @property
    def cache_dir(self) -> Path:
        return Path(self.paths.cache_dir)


def register() -> None:
    """Make the schema available to the defaults list of conf/config.yaml."""
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    store = ConfigStore.instance()
    store.store(name="runner_schema", node=RunConfig)


def validate(cfg: DictConfig) -> RunConfig:
    """Typed, checked copy of the composed config; raises ConfigError naming the bad key."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        run_cfg = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        where = f" (key {key})" if key else ""
        message = getattr(error, "msg", str(error))
        raise ConfigError(f"invalid config{where}: {message}") from None
    assert isinstance(run_cfg, RunConfig)
    return run_cfg
