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
from runner.settings import runtime_only

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# every stage, in pipeline order (runner/stages/<name>.py)
STAGE_NAMES = ("export", "convert", "preprocess", "infer", "reference", "parity", "evaluate",
               "benchmark", "e2e", "score")
# what a run does when no stage preset says otherwise (`score` reads results made elsewhere)
DEFAULT_STAGES = ("export", "convert", "preprocess", "infer", "reference", "parity", "evaluate",
                  "benchmark", "e2e")
RUNTIMES = ("onnxruntime", "torch", "ais_bench")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# ONNX Runtime's static quantization calibrates activation ranges by one of these
# (runner/quantize.py)
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
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


def arch_allowed(name: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    """Whether dotted `name` lies inside one of the packages `prefixes` ("pkg.sub." or "pkg.sub")
    and names no private or dunder part on the way."""
    parts = name.split(".")
    if not all(parts) or any(p.startswith("_") for p in parts):
        return False
    packages = [p.rstrip(".") for p in prefixes]
    return any(name.startswith(f"{package}.") for package in packages if package)


def module_inside(module: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    """Whether module `module` is one of the packages `prefixes` or inside one: a builder
    defined in a package's own `__init__.py` has that package itself as its module."""
    packages = [p.rstrip(".") for p in prefixes]
    return any(module == package or module.startswith(f"{package}.")
               for package in packages if package)


def allowed_arch_prefixes(extra: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The packages `model.arch` may name: the built-in ones and security.extra_arch_prefixes."""
    return (*BUILTIN_ARCH_PREFIXES, *extra)


def check_arch(arch: str, allowed: tuple[str, ...]) -> None:
    """The one allow-list check of `model.arch`, for the config and for every import of it."""
    if not arch_allowed(arch, allowed):
        raise ConfigError(
            f"model.arch={arch!r} is outside the allowed packages ({', '.join(allowed)}): to "
            "trust another package, pass security.extra_arch_prefixes=[its.prefix]"
        )


# The two decode-and-resize families a recipe can follow. `pil`: the guides' and torchvision's
# scripts (PIL decode, antialiased resize). `opencv`: scripts built on cv2.imread/cv2.resize, such
# as MLPerf Inference's ResNet50 reference; OpenCV resizes differently (no antialias for
# INTER_LINEAR, its own rounding), so a recipe must say which one its reference used.
LIBRARIES = ("pil", "opencv")
PIL_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
# OpenCV's own flag names, so a recipe reads like the script it follows (cv2.INTER_AREA, ...)
OPENCV_INTERPOLATIONS = ("INTER_NEAREST", "INTER_LINEAR", "INTER_CUBIC", "INTER_AREA",
                         "INTER_LANCZOS4", "INTER_LINEAR_EXACT", "INTER_NEAREST_EXACT")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")


def input_shape(bs: int, size: int, layout: str) -> tuple[int, int, int, int]:
    """The shape of a batch of `bs` normalized `size` x `size` images in `layout`."""
    return (bs, 3, size, size) if layout == "NCHW" else (bs, size, size, 3)


@dataclass
class PreprocessRecipe:
    """How one image becomes a model input; the same recipe serves every model.

    Decode, resize and crop (`library`, `resize`/`crop_fraction`, `interpolation`, `crop`,
    `crop_offset`) give the uint8 RGB crop the cache keeps; `divide_by_255`, `mean`, `std` and
    `channel_order` are applied when a batch is fed (`runner.data.transforms.normalize`), in the
    model input's `layout`.
    """

    library: str = "pil"  # pil | opencv: whose decoder and resize the reference script used
    # shorter side after resize, longer side int(resize * long / short); null when crop_fraction
    # gives it
    resize: int | None = 256
    # the crop is this fraction of the shorter side (MLPerf: 0.875, 224 of 256): the shorter
    # side becomes int(100 * crop / (100 * crop_fraction)), as MLPerf's resize_with_aspectratio
    crop_fraction: float | None = None
    interpolation: str = "bilinear"  # PIL: nearest|bilinear|bicubic; OpenCV: INTER_* names
    crop: int = 224
    # torchvision CenterCrop rounds the offset half-to-even; the InceptionV4 guide and MLPerf
    # truncate
    crop_offset: str = "round"
    # ToTensor's /255 before the mean; false keeps 0..255 values (MLPerf, Caffe-style scripts)
    divide_by_255: bool = True
    # in the order of the model's input channels (channel_order); std [1, 1, 1] subtracts the
    # mean only (MLPerf): dividing by 1 is exact in float32
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    channel_order: str = "RGB"  # BGR: the model takes cv2.imread's channel order
    # the model input's layout: NCHW (PyTorch, MLPerf's need_transpose) or NHWC (channels last,
    # as TensorFlow-origin graphs take it); an NHWC model exported from a PyTorch checkpoint gets
    # a leading transpose to NCHW (runner.models.build.for_input_layout)
    layout: str = "NCHW"
    # true: the host stops at the uint8 crop and the chip normalizes (the AlexNet guide's second
    # route): on Ascend an AIPP op written from this recipe (aipp.cfg, atc --insert_op_conf), on
    # ONNX Runtime and PyTorch the exported model's first nodes (runner.models.on_device). The
    # model is fed the cached uint8 crops as they are: (N, H, W, 3) RGB, whatever `layout`
    # (which then names the layout the normalized tensor takes inside the model)
    on_device: bool = False

    def __post_init__(self) -> None:
        _check_choice("model.preprocess.library", self.library, LIBRARIES)
        _check_positive("model.preprocess.crop", self.crop)
        if (self.resize is None) == (self.crop_fraction is None):
            given = ["null" if v is None else v for v in (self.resize, self.crop_fraction)]
            raise ConfigError(
                f"model.preprocess.resize={given[0]} and crop_fraction={given[1]}: set exactly "
                "one of them (the other to null)"
            )
        if self.crop_fraction is not None and not 0 < self.crop_fraction <= 1:
            raise ConfigError(
                f"model.preprocess.crop_fraction={self.crop_fraction} must be in (0, 1], "
                "e.g. 0.875"
            )
        if self.resize is not None:
            _check_positive("model.preprocess.resize", self.resize)
        if self.crop > self.shorter_side:
            raise ConfigError(
                f"model.preprocess.crop={self.crop} is larger than resize={self.shorter_side}"
            )
        if self.library == "pil" and self.interpolation not in PIL_INTERPOLATIONS:
            raise ConfigError(
                f"model.preprocess.interpolation={self.interpolation!r} is not a PIL filter "
                f"(library=pil): use one of {', '.join(PIL_INTERPOLATIONS)}"
            )
        if self.library == "opencv" and self.interpolation not in OPENCV_INTERPOLATIONS:
            raise ConfigError(
                f"model.preprocess.interpolation={self.interpolation!r} is not an OpenCV flag "
                f"(library=opencv): use one of {', '.join(OPENCV_INTERPOLATIONS)}"
            )
        _check_choice("model.preprocess.crop_offset", self.crop_offset, ("round", "floor"))
        _check_choice("model.preprocess.channel_order", self.channel_order, CHANNEL_ORDERS)
        _check_choice("model.preprocess.layout", self.layout, LAYOUTS)
        for key, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3:
                raise ConfigError(
                    f"model.preprocess.{key} needs 3 values ({', '.join(self.channel_order)}), "
                    f"got {values}"
                )
        if any(s == 0 for s in self.std):
            raise ConfigError(f"model.preprocess.std={self.std} contains 0")

    @property
    def shorter_side(self) -> int:
        """The shorter side after resize: `resize`, or what `crop_fraction` makes of the crop."""
        if self.resize is not None:
            return self.resize
        assert self.crop_fraction is not None
        # MLPerf's float expression (a percentage, 87.5), so the size is its size
        return int(100.0 * self.crop / (100.0 * self.crop_fraction))

    def cropping(self) -> Cropping:
        return Cropping(self.library, self.shorter_side, self.interpolation, self.crop,
                        self.crop_offset)

    def normalization(self) -> Normalization:
        """What a batch goes through as it is fed: on the host (the float route), or nothing
        there and the same arithmetic on the chip (`on_device`)."""
        return Normalization(self.divide_by_255, tuple(self.mean), tuple(self.std),
                             self.channel_order, self.layout, self.on_device)

    def host_normalization(self) -> Normalization:
        """The float route's normalization, whichever route feeds the model: what the PyTorch
        reference is fed, so parity holds the on-device route to the float reference."""
        return Normalization(self.divide_by_255, tuple(self.mean), tuple(self.std),
                             self.channel_order, self.layout)


@dataclass(frozen=True)
class Cropping:
    """The part of a recipe that makes the cached uint8 crop (what `preprocess` reads)."""

    library: str
    shorter_side: int  # resolved from resize or crop_fraction
    interpolation: str
    crop: int
    crop_offset: str


@dataclass(frozen=True)
class Normalization:
    """The part of a recipe applied when a batch is fed (what `infer` and `reference` read)."""

    divide_by_255: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str
    layout: str  # of the normalized tensor: NCHW | NHWC
    # true: the host feeds the uint8 (N, H, W, 3) RGB crops as cached, and the chip applies the
    # rest (runner.models.on_device, runner.backends.aipp)
    on_device: bool = False

    @property
    def route(self) -> str:
        """The preprocessing route, as the run's tag and report name it."""
        return "on_device" if self.on_device else "host_float"


@dataclass
class PublishedAccuracy:
    top1: float = MISSING  # percent
    top5: float = MISSING


@dataclass
class PublishedFigures:
    """The figures a guide publishes for its model, which runs and sweeps are compared with
    (`model.published`), and the guide's acceptance rule for accuracy."""

    guide: str = ""  # where they are published, e.g. "Ascend ModelZoo AlexNet guide"
    # top-1/top-5 per source: `pth` (the PyTorch checkpoint's own figure) and per chip (names as
    # in conf/chip/, e.g. ascend310p3)
    accuracy: dict[str, PublishedAccuracy] = field(default_factory=dict)
    # throughput (images/s, ais_bench's 1000*bs/mean ms) per chip name, then per batch size
    # (values typed Any: OmegaConf refuses a YAML int where a nested dict's values are float)
    fps: dict[str, dict[int, Any]] = field(default_factory=dict)
    # the rule: accuracy passes when top-1 and top-5 are each at most `max_accuracy_drop`
    # percentage points below the `reference` source's (the guides: 1 point below pth)
    reference: str = "pth"
    max_accuracy_drop: float = 1.0

    def __post_init__(self) -> None:
        if self.max_accuracy_drop < 0:
            raise ConfigError(f"model.published.max_accuracy_drop={self.max_accuracy_drop} "
                              "must be >= 0 (percentage points)")
        if self.accuracy and self.reference not in self.accuracy:
            raise ConfigError(
                f"model.published.reference={self.reference!r} is not a source of "
                f"model.published.accuracy ({', '.join(self.accuracy)}): name one of them"
            )
        for chip, table in self.fps.items():
            for bs, fps in table.items():
                if bs <= 0 or isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0:
                    raise ConfigError(f"model.published.fps.{chip}.{bs}={fps!r}: write "
                                      "<batch size>: <images/s>, both > 0")


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
    # the guide's published figures and acceptance rule, which reports compare runs with
    published: PublishedFigures = field(default_factory=PublishedFigures)

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

    def input_shape(self, bs: int) -> tuple[int, int, int, int]:
        return input_shape(bs, self.input_size, self.preprocess.layout)


@dataclass
class SyntheticConfig:
    """Generated JPEGs, so the whole pipeline runs on any machine without ImageNet."""

    num_images: int = 64
    seed: int = 0


# How a dataset root is laid out (runner.data.dataset): `guide`, the Ascend guides'
# <root>/val/*.JPEG + <root>/val_label.txt; `folders`, torchvision's ImageFolder
# <root>/val/<wnid>/*.JPEG; `torchvision`, a root where torchvision.datasets.ImageNet extracted
# its archives (then read as folders); `auto`, guide or folders, whichever the root holds
DATASET_LAYOUTS = ("auto", "guide", "folders", "torchvision")


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str | None = None  # folder holding `images` and `labels`
    images: str = "val"  # folder of images, relative to root
    labels: str = "val_label.txt"  # "<file name> <0-based class>" per line, relative to root
    layout: str = "auto"  # auto | guide | folders | torchvision (DATASET_LAYOUTS)
    limit: int | None = None  # first N images (natural sort order) only
    # what to do with images that have no label or labels without an image: stop or skip
    on_mismatch: str = "stop"
    synthetic: SyntheticConfig | None = None

    def __post_init__(self) -> None:
        if self.limit is not None:
            _check_positive("dataset.limit", self.limit)
        _check_choice("dataset.on_mismatch", self.on_mismatch, ("stop", "skip"))
        _check_choice("dataset.layout", self.layout, DATASET_LAYOUTS)
        if self.synthetic is not None and self.layout not in ("auto", "guide"):
            raise ConfigError(
                f"dataset.layout={self.layout} is not for dataset={self.name}: synthetic images "
                "are generated in the guide layout; leave dataset.layout=auto"
            )


@dataclass
class CalibrationConfig:
    """chip.precision=int8: how ONNX Runtime's static quantization finds activation ranges."""

    # the first N images of the run's dataset (after dataset.limit), clipped to its size
    num_images: int = 300
    method: str = "MinMax"  # MinMax | Entropy | Percentile (CALIBRATION_METHODS)

    def __post_init__(self) -> None:
        _check_positive("chip.calibration.num_images", self.num_images)
        _check_choice("chip.calibration.method", self.method, CALIBRATION_METHODS)


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
    # PyTorch: torch.compile the module (compile time reported apart: compile_s)
    compile: bool = False
    # PyTorch on CUDA: capture the forward once per batch shape and replay it (static buffers)
    cuda_graphs: bool = False
    # chip.precision=int8 only: the calibration of ONNX Runtime's static quantization
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        _check_choice("chip.runtime", self.runtime, RUNTIMES)
        _check_choice("chip.device_type", self.device_type, DEVICE_TYPES[self.runtime])
        _check_choice("chip.precision", self.precision, PRECISIONS)
        if self.precision == "int8" and (self.runtime, self.device_type) != ("onnxruntime",
                                                                              "cpu"):
            raise ConfigError(self._int8_refusal())
        if self.precision == "bf16" and self.runtime == "ais_bench":
            raise ConfigError(
                f"chip.precision=bf16 is not supported by runtime ais_bench (chip={self.name}): "
                "use chip.precision=fp16 (atc force_fp16) or fp32 where the soc has it"
            )
        if self.compile and self.runtime != "torch":
            raise ConfigError(
                f"chip.compile=true is torch.compile, for runtime torch (chip=cuda, "
                f"chip=torch_cpu), not runtime {self.runtime}: remove it"
            )
        if self.cuda_graphs and (self.runtime, self.device_type) != ("torch", "cuda"):
            raise ConfigError(
                f"chip.cuda_graphs=true replays captured GPU work: it needs runtime torch on "
                f"device_type cuda (chip=cuda), not {self.runtime} on {self.device_type}: "
                "remove it"
            )
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

    def _int8_refusal(self) -> str:
        """Why chip.precision=int8 is refused on this chip, and what to do instead."""
        if self.runtime == "ais_bench":
            elsewhere = ("quantize for Ascend with AMCT (CANN's model compression toolkit) and "
                         "convert its model, or use chip=cpu for ONNX Runtime's int8")
        else:
            elsewhere = "use chip=cpu (ONNX Runtime's static quantization) for int8"
        return (f"chip.precision=int8 is ONNX Runtime's static quantization on the CPU (chip=cpu)"
                f", not runtime {self.runtime} on {self.device_type} (chip={self.name}): "
                f"{elsewhere}, or chip.precision=fp32")


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
    # measurements (benchmark, e2e) are measured anew on every run; true reuses a finished one
    # (as resuming an interrupted sweep wants), and every place the figure shows says so
    reuse_measurements: bool = False
    # how a cache hit is checked against what was recorded when it was written: "stat" (every
    # file whose size, mtime, ctime or inode changed is re-hashed, as git's index does, and files
    # up to 1 MiB always), "size" (sizes only; files up to 1 MiB re-hashed) or "full" (every
    # file re-hashed). benchmarks/cache_verify.py measures what each costs
    verify: str = "stat"

    def __post_init__(self) -> None:
        for name in self.force:
            _check_choice("cache.force", name, (*STAGE_NAMES, "all"))
        _check_choice("cache.verify", self.verify, ("stat", "size", "full"))


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
class E2EConfig:
    """The end-to-end pass from the preprocessed cache (the `e2e` stage)."""

    images: int | None = None  # the first N images; None: the whole dataset
    # batches read and normalized ahead by the loader thread; 0: serial; null: serial where
    # inference already fills this host's cores (runner.inference.default_prefetch), else 2
    prefetch: int | None = None

    def __post_init__(self) -> None:
        if self.images is not None:
            _check_positive("e2e.images", self.images)
        if self.prefetch is not None and self.prefetch < 0:
            raise ConfigError(f"e2e.prefetch={self.prefetch} must be >= 0")


@dataclass
class ParityTolerance:
    """How far the converted model may stray from PyTorch on the evaluation tensors.

    A logit passes when |converted - reference| <= max_abs_diff + rtol * scale, `scale` being
    the largest |reference logit| of its image: numpy.allclose's rule, with the magnitude taken
    per image rather than per logit, because a logit's rounding error grows with the sums that
    produce it (the image's logit scale), not with its own value, which may be near zero.
    """

    max_abs_diff: float  # the absolute floor on |logit difference|, every image and class
    min_top1_agreement: float  # fraction of images whose top-1 class must agree
    max_topk_delta: float  # largest |top-1| and |top-5| accuracy difference, percentage points
    # relative to the image's logit scale: models' logits scale from ~10 (trained AlexNet) to
    # thousands (random-weight ResNet-50 without its trained BN statistics)
    rtol: float = 0.0

    def check(self, prefix: str) -> None:
        for key in ("max_abs_diff", "max_topk_delta", "rtol"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{prefix}.{key}={getattr(self, key)} must be >= 0")
        if not 0 <= self.min_top1_agreement <= 1:
            raise ConfigError(
                f"{prefix}.min_top1_agreement={self.min_top1_agreement} must be in 0..1"
            )


@dataclass
class ParityTolerances:
    # fp32: rtol 1e-5 is ~80 float32 epsilons of the image's largest logit: room for ONNX
    # Runtime's other summation order (random-weight ResNet-50 measured 4.7e-7 of its ~3,700
    # logit scale, 0.0017 absolute), far below a wrong operator
    fp32: ParityTolerance = field(
        default_factory=lambda: ParityTolerance(1e-3, 0.999, 0.1, rtol=1e-5))
    # fp16: ~5 half-precision epsilons (9.8e-4) of the logit scale above the 0.1 floor
    fp16: ParityTolerance = field(
        default_factory=lambda: ParityTolerance(0.1, 0.99, 0.5, rtol=5e-3))
    # bf16 keeps 8 significant bits to fp16's 11: 8x fp16's rounding error, so 8x fp16's
    # max_abs_diff and rtol (measured bf16/fp16 ratios 2.7-8.7 with chip=torch_cpu: docs/chips.md)
    # and a looser top-1 agreement for the near ties it flips
    bf16: ParityTolerance = field(
        default_factory=lambda: ParityTolerance(0.8, 0.98, 1.0, rtol=4e-2))
    # int8 (ONNX Runtime's static quantization, chip=cpu): 8-bit activations and weights, each
    # tensor's range split into 256 steps, so a logit's error is a fraction of its image's
    # logit scale (rtol 0.15 of the largest |logit|: 0.13 measured on random AlexNet and
    # InceptionV4, plus a floor of 0.5) and near ties flip: top-1 agreement 0.95 and 2 points
    # of top-1/top-5 (docs/results.md#int8-on-the-cpu; to be confirmed with trained weights)
    int8: ParityTolerance = field(
        default_factory=lambda: ParityTolerance(0.5, 0.95, 2.0, rtol=0.15))


@dataclass
class ParityConfig:
    tolerance: ParityTolerances = field(default_factory=ParityTolerances)
    worst: int = 5  # images named in the report and in the error message
    # compare a seeded sample of N images (PyTorch runs on those only); None: every image.
    # For a 50,000-image run on a host without a GPU, e.g. parity.sample=5000
    sample: int | None = None
    device: str = "auto"  # the PyTorch reference's: auto (cuda where torch sees one) | cpu | cuda

    def __post_init__(self) -> None:
        for precision in PRECISIONS:
            getattr(self.tolerance, precision).check(f"parity.tolerance.{precision}")
        _check_positive("parity.worst", self.worst)
        if self.sample is not None:
            _check_positive("parity.sample", self.sample)
        _check_choice("parity.device", self.device, ("auto", "cpu", "cuda"))


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
    repeats: int = 3  # timed runs; their spread is throughput_cv
    # each repeat in a fresh process (its own session and warm-up), so the repeats' spread holds
    # what varies between processes too, as two runs of one config do; false: the repeats back
    # to back after one warm-up in one process (a quick look)
    isolate_repeats: bool = True
    # warn when, just before or while timing, others use more than this fraction of the device
    # (a benchmark is then INVALID)
    busy_threshold: float = 0.25
    # the largest spread of throughput across repeats (coefficient of variation) for a VALID
    # benchmark
    max_cv: float = 0.05
    # true: an INVALID benchmark fails the run (default: report it); the figures are the same
    # either way, so it is no part of the benchmark's cache key
    require_valid: bool = runtime_only(False)

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
        if self.max_cv < 0:
            raise ConfigError(f"benchmark.max_cv={self.max_cv} must be >= 0")
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
class CompareConfig:
    """Gate a sweep (or one run) against a baseline (runner/compare.py, docs/compare.md)."""

    # a run id, a sweep's parent run id, or a results JSON of `python -m runner compare --save`
    # (FILE or FILE#baseline), in mlflow.tracking_uri's store; null: no comparison
    baseline: str | None = None
    # the figures whose REGRESSED fails the sweep (exit status 1); empty: every figure
    fail_on: list[str] = field(default_factory=list)
    # true: a figure of fail_on that is INVALID or UNMATCHED fails the gate too
    strict: bool = False

    def __post_init__(self) -> None:
        if self.baseline is not None and not self.baseline.strip():
            raise ConfigError("compare.baseline is empty: give a run id or a results file, or "
                              "null")


# what a constrained search maximizes: a figure of the benchmark (or e2e) stage, images/s
SEARCH_OBJECTIVES = ("throughput_fps", "e2e_fps")


@dataclass
class SearchConfig:
    """A constrained search (`hydra/sweeper=optuna`, conf/experiment/search_cpu.yaml,
    docs/search.md): each run is judged feasible or not (runner/search.py) and, under the
    optuna sweeper, returns its objective. Read after the stages, by no stage: no cache key."""

    # the latency budget: a run whose latency_ms_p99 (per batch) exceeds it is infeasible;
    # null: no budget (and no search outside the optuna sweeper)
    max_p99_ms: float | None = None
    objective: str = "throughput_fps"  # maximized: throughput_fps | e2e_fps (SEARCH_OBJECTIVES)
    # the guide's accuracy rule: a FAIL is always infeasible; true: N/A (random weights, not the
    # whole ImageNet val, no top-1 in the run) is infeasible too, so only a PASS is feasible
    require_accuracy_pass: bool = False

    def __post_init__(self) -> None:
        if self.max_p99_ms is not None and not self.max_p99_ms > 0:
            raise ConfigError(f"search.max_p99_ms={self.max_p99_ms!r} must be > 0 (milliseconds "
                              "per batch), or null for no latency budget")
        _check_choice("search.objective", self.objective, SEARCH_OBJECTIVES)


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
    e2e: E2EConfig = field(default_factory=E2EConfig)
    parity: ParityConfig = field(default_factory=ParityConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    traceback: bool = False  # print the traceback of an error, not only its one-line message

    def __post_init__(self) -> None:
        if self.bs <= 0:
            raise ConfigError(f"bs={self.bs} must be a positive integer, e.g. bs=16")
        sizes = self.chip.dynamic_batch_sizes
        if sizes and self.bs not in sizes:
            raise ConfigError(
                f"bs={self.bs} is not one of chip.dynamic_batch_sizes={sizes}: add it there"
            )
        check_arch(self.model.arch, allowed_arch_prefixes(self.security.extra_arch_prefixes))
        if self.model.preprocess.on_device:
            self._check_on_device()

    def _check_on_device(self) -> None:
        """What model.preprocess.on_device=true cannot do on this chip, before any work."""
        chip, recipe = self.chip, self.model.preprocess
        if chip.precision == "int8":
            raise ConfigError(
                "model.preprocess.on_device=true with chip.precision=int8: the static "
                "quantization calibrates on float inputs and is not tested with a uint8 input: "
                "use model.preprocess.on_device=false for int8, or chip.precision=fp32"
            )
        if chip.runtime != "ais_bench":
            return
        # Ascend: AIPP does the normalization (runner/backends/aipp.py), and it outputs fp16
        # into the model in NCHW (CANN's ATC manual, "Configuration File Template": "For Caffe
        # and ONNX, the data format can only be NCHW")
        if chip.precision == "fp32":
            raise ConfigError(
                f"model.preprocess.on_device=true on {chip.name}: AIPP hands the model fp16 "
                "values, so chip.precision=fp32 cannot hold; set chip.precision=fp16, or "
                "model.preprocess.on_device=false for fp32"
            )
        if recipe.layout != "NCHW":
            raise ConfigError(
                f"model.preprocess.on_device=true with model.preprocess.layout={recipe.layout} "
                f"on {chip.name}: AIPP feeds an ONNX model NCHW only; export the model NCHW "
                "(layout=NCHW) or set model.preprocess.on_device=false"
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
