"""PyTorch on the CPU or an NVIDIA GPU: fp32, fp16 or bf16, optionally channels_last,
torch.compile and (on CUDA) CUDA graphs; needs only torch (and torchvision for its models).

`convert` rebuilds the nn.Module the ONNX file was exported from (model.arch + the weights),
checks on a probe batch that it computes what the ONNX file computes, and saves the architecture
name with the state dict: a session rebuilds the module from that file alone.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runner import environment
from runner.backends import ConversionError, SessionSettings
from runner.config import Normalization, RunConfig, input_shape
from runner.errors import ConfigError, ToolMissingError
from runner.models import on_device
from runner.models.spec import ModelSpec

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.pt"
PROBE_BATCH = 2
# fp32 on the CPU, both sides: a different model differs by orders of magnitude more
PROBE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ConvertSettings:
    """The saved module depends on the model spec alone (not on bs or the device)."""

    model: ModelSpec
    input_size: int  # of the probe batch compared with the ONNX file
    # model.preprocess.on_device=true: the normalization the module applies to uint8 crops
    in_model: Normalization | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ConvertSettings:
        return cls(ModelSpec.from_config(cfg), cfg.model.input_size, on_device.in_model(cfg))


def convert_settings(cfg: RunConfig) -> ConvertSettings:
    return ConvertSettings.from_config(cfg)


def check(session: SessionSettings, devices: tuple[int, ...]) -> None:
    """Refuse a device, precision or option this torch cannot use before any work is done."""
    if session.compile and session.device_type == "cpu" and not any(
            shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        raise ToolMissingError(
            "chip.compile=true on the CPU: torch.compile's inductor builds C++ kernels and "
            "finds no C++ compiler (g++, c++, clang++ or $CXX): install one, or remove "
            "chip.compile"
        )
    if session.device_type != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        built_for = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (CPU build)"
        raise ToolMissingError(
            f"chip.device_type=cuda, but torch {torch.__version__} (built for {built_for}) sees "
            "no CUDA device: run on a machine with an NVIDIA GPU and driver, or use "
            "chip=torch_cpu"
        )
    count = torch.cuda.device_count()
    if max(devices) >= count:
        raise ConfigError(
            f"chip.devices={list(devices)}: torch sees {count} CUDA device(s), ids "
            f"0..{count - 1}"
        )
    if session.precision == "bf16":
        for device in devices:
            if torch.cuda.get_device_capability(device) < (8, 0):
                raise ConfigError(
                    f"chip.precision=bf16: CUDA device {device} "
                    f"({torch.cuda.get_device_name(device)}) has no bfloat16 arithmetic (compute "
                    "capability 8.0+, Ampere or later): use chip.precision=fp16"
                )
    if session.compile and importlib.util.find_spec("triton") is None:
        raise ToolMissingError(
            f"chip.compile=true on CUDA: torch.compile's inductor needs triton, which torch "
            f"{torch.__version__} cannot import here: install the triton matching torch, or "
            "remove chip.compile"
        )


def _check_against_onnx(net: torch.nn.Module, onnx_path: Path, settings: ConvertSettings,
                        ) -> float:
    import onnxruntime as ort
    import torch

    size = settings.input_size
    if settings.in_model is not None:
        probe = on_device.probe_batch(PROBE_BATCH, size, settings.model.seed)
    else:
        probe = np.random.default_rng(settings.model.seed).standard_normal(
            input_shape(PROBE_BATCH, size, settings.model.input_layout), dtype=np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: probe})[0]
    with torch.inference_mode():
        got = net(torch.from_numpy(probe)).numpy()
    difference = float(np.abs(got - expected).max())
    if not difference <= PROBE_TOLERANCE * (1.0 + float(np.abs(expected).max())):
        raise ConversionError(
            f"the PyTorch model rebuilt from model.arch={settings.model.arch} and model.weights "
            "does "
            f"not compute what {onnx_path} computes (max |difference| {difference:.3g} on a "
            "probe batch): the export entry was made from other weights; rerun with "
            "cache.force=[export,convert]"
        )
    return difference


def convert(onnx_path: Path, out_dir: Path, settings: ConvertSettings,
            ) -> tuple[Path, dict[str, Any]]:
    import torch

    spec = settings.model
    net = spec.build()
    difference = _check_against_onnx(on_device.wrap(net, settings.in_model), onnx_path, settings)
    target = out_dir / MODEL_FILE
    in_model = None if settings.in_model is None else asdict(settings.in_model)
    torch.save({"arch": spec.arch, "arch_kwargs": dict(spec.arch_kwargs),
                "input_layout": spec.input_layout, "in_model": in_model,
                "state_dict": net.state_dict()}, target)
    return target, {"torch": torch.__version__, "arch": spec.arch,
                    "probe_max_abs_difference_vs_onnx": difference}


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# eager calls on a side stream before a CUDA graph is captured: cuDNN's benchmark mode picks its
# kernels (and torch.compile compiles) there, not inside the capture
CAPTURE_WARMUP_CALLS = 3
DEVICE_TIMER = ("CUDA events recorded on the session's stream right before and right after the "
                "forward (or graph replay): the host-to-device copy, the cast to the precision and "
                "the device-to-host copy of the logits are outside, as in ais_bench's compute "
                "time and trtexec's GPU Compute Time")


def _fp32_means_fp32(torch: Any) -> None:
    """No TensorFloat-32 in cuDNN convolutions and matmuls (fp16 and bf16 are not affected).

    The legacy flags, not torch 2.9's `fp32_precision`: they also set the new per-operator flags
    (matmul "ieee", conv not "tf32"), and mixing the two APIs makes later reads of the legacy
    flags raise in torch 2.11 and 2.13.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


class TorchSession:
    """One model on one device. Every `run` is synchronous: it returns once the logits are on
    the host, so a host timer around it spans the whole call.

    On CUDA: the batch is copied into pinned host memory and from there to the GPU with
    non_blocking copies on the session's stream, cast to the precision and layout on the GPU;
    the logits come back the same way, and one `Stream.synchronize()` ends the call. CUDA events
    around the forward give the device time (`own_compute_ms`).

    With `cuda_graphs` or `compile` the model sees one static batch shape: the first batch's
    (or a larger one's, which is compiled/captured anew); a shorter batch runs padded to it and
    its padding rows' logits are dropped, as ais_bench pads a static OM. So the short last batch
    of the infer pass neither recompiles nor captures inside the timed pass.
    """

    def __init__(self, model_path: Path, settings: SessionSettings, device: int) -> None:
        import torch

        from runner.models import build

        check(settings, (device,))
        saved = torch.load(model_path, map_location="cpu", weights_only=True)
        net = build.for_input_layout(
            build.resolve_arch(saved["arch"], settings.allowed_prefixes)(**saved["arch_kwargs"]),
            saved["input_layout"])
        net.load_state_dict(saved["state_dict"])
        # model.preprocess.on_device=true: fed uint8 (N, H, W, 3) crops, which stay uint8 up to
        # the device (a quarter of the bytes to copy) and keep their own layout
        self._uint8_input = bool(saved.get("in_model"))
        if self._uint8_input:
            in_model = dict(saved["in_model"])
            in_model["mean"], in_model["std"] = tuple(in_model["mean"]), tuple(in_model["std"])
            net = on_device.wrap(net, Normalization(**in_model))
        self._torch = torch
        self._chip = settings
        self._cuda = settings.device_type == "cuda"
        if self._cuda:
            self._device = torch.device("cuda", device)
            torch.cuda.set_device(self._device)  # compiled kernels and graphs use the current one
            torch.backends.cudnn.benchmark = True  # kernels picked during the warm-up
            _fp32_means_fp32(torch)
        else:
            self._device = torch.device("cpu")
            if settings.threads:
                torch.set_num_threads(settings.threads)
        self._dtype = getattr(torch, DTYPES[settings.precision])
        self._layout = torch.channels_last if settings.channels_last else torch.contiguous_format
        # the fed tensor's: the uint8 crops are NHWC already, the model's layers get channels
        # last (when asked) from the weights' layout
        self._input_layout = torch.contiguous_format if self._uint8_input else self._layout
        self._input_dtype = torch.uint8 if self._uint8_input else torch.float32
        self._net = net.eval().to(device=self._device, dtype=self._dtype,
                                  memory_format=self._layout)
        self._forward: Any = self._net
        if settings.compile:
            if settings.compile_cache_dir:
                # Inductor's kernel and FX-graph caches on disk: a bs sweep's later jobs (new
                # processes) reuse what the first compiled
                os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", settings.compile_cache_dir)
            # dynamic=False: one graph per static batch shape (see the class docstring)
            self._forward = torch.compile(self._net, dynamic=False)
        self._static = settings.compile or settings.cuda_graphs
        self._rows = 0  # the static batch size (static mode)
        self._buffers: dict[str, Any] = {}
        self._graph: Any = None
        self._graph_out: Any = None
        self.compile_s = 0.0  # first call per static shape: compilation (+ that one call)
        self.graph_capture_s = 0.0
        self._shapes: list[list[int]] = []
        self._padded_calls = 0
        self._device_ms: list[float] = []
        if self._cuda:
            self._stream = torch.cuda.current_stream(self._device)
            self._events = (torch.cuda.Event(enable_timing=True),
                            torch.cuda.Event(enable_timing=True))

    # -- shapes and buffers -------------------------------------------------------------------

    def _prepare(self, shape: tuple[int, ...]) -> None:
        """Buffers for a batch of `shape`: kept while it fits (a shorter batch uses their first
        rows), else made anew for it; in static mode a new static shape is also compiled and/or
        captured, timed apart from every call."""
        torch = self._torch
        current = self._buffers.get("host_in")
        same_image = current is not None and tuple(current.shape[1:]) == tuple(shape[1:])
        if same_image and shape[0] <= current.shape[0]:
            return
        rows = max(shape[0], self._rows) if same_image else shape[0]
        self._rows = rows
        full = (rows, *shape[1:])
        self._graph = self._graph_out = None  # frees the old graph's memory pool
        buffers: dict[str, Any] = {
            # pinned (page-locked) host memory: the copy to the GPU runs asynchronously at full
            # bus speed instead of through the driver's pageable staging buffer
            "host_in": torch.zeros(full, dtype=self._input_dtype, pin_memory=self._cuda)}
        if self._cuda:
            buffers["device_in"] = torch.zeros(full, dtype=self._input_dtype,
                                               device=self._device)
            buffers["model_in"] = torch.zeros(full, dtype=self._dtype, device=self._device
                                              ).contiguous(memory_format=self._input_layout)
        self._buffers = buffers
        if self._static:
            self._first_static_call(full)

    def _first_static_call(self, full: tuple[int, ...]) -> None:
        torch = self._torch
        model_in = self._buffers["model_in"] if self._cuda else (
            self._buffers["host_in"].to(self._dtype).contiguous(
                memory_format=self._input_layout))
        with torch.inference_mode():
            started = time.perf_counter()
            if self._chip.cuda_graphs:
                side = torch.cuda.Stream(self._device)
                side.wait_stream(self._stream)
                with torch.cuda.stream(side):
                    self._forward(model_in)  # compiles, when compiling
                    side.synchronize()
                    compiled = time.perf_counter()
                    for _ in range(CAPTURE_WARMUP_CALLS):
                        self._forward(model_in)
                self._stream.wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._graph_out = self._forward(model_in)
                self._graph = graph
                torch.cuda.synchronize(self._device)
                self.graph_capture_s += time.perf_counter() - compiled
            else:
                self._forward(model_in)
                if self._cuda:
                    torch.cuda.synchronize(self._device)
                compiled = time.perf_counter()
        if self._chip.compile:
            self.compile_s += compiled - started
        self._shapes.append(list(full))

    # -- calls --------------------------------------------------------------------------------

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        rows = len(batch)
        if self._cuda or self._static:  # eager on the CPU reads the batch where it is
            self._prepare(batch.shape)
        if self._static and rows < self._rows:
            self._padded_calls += 1
        with torch.inference_mode():
            if self._cuda:
                return self._run_cuda(batch)
            if self._static:
                host_in = self._buffers["host_in"]
                host_in.numpy()[:rows] = batch  # the padding rows keep the last batch's values
                inputs = host_in
            else:
                inputs = torch.from_numpy(batch)
            logits = self._forward(inputs.to(self._dtype).contiguous(
                memory_format=self._input_layout))
            return logits[:rows].float().numpy()

    def _run_cuda(self, batch: np.ndarray) -> np.ndarray:
        rows = len(batch)
        used = self._rows if self._static else rows
        host_in, device_in = self._buffers["host_in"], self._buffers["device_in"]
        model_in = self._buffers["model_in"]
        host_in.numpy()[:rows] = batch  # pageable -> pinned, on the host
        device_in[:rows].copy_(host_in[:rows], non_blocking=True)  # async, on the stream
        model_in[:rows].copy_(device_in[:rows])  # cast to the precision and layout, on the GPU
        start, end = self._events
        start.record(self._stream)
        if self._graph is not None:
            self._graph.replay()
            logits = self._graph_out
        else:
            logits = self._forward(model_in[:used])
        end.record(self._stream)
        logits = logits[:rows].float()  # fp16/bf16 logits cast on the GPU before the copy
        host_out = self._host_out(tuple(logits.shape))
        host_out.copy_(logits, non_blocking=True)
        self._stream.synchronize()  # the whole call is done: logits on the host, events set
        self._device_ms.append(start.elapsed_time(end))
        return host_out.numpy().copy()  # the pinned buffer is reused by the next call

    def _host_out(self, shape: tuple[int, ...]) -> Any:
        out = self._buffers.get("host_out")
        if out is None or out.shape[0] < shape[0] or tuple(out.shape[1:]) != shape[1:]:
            out = self._torch.empty((self._rows, *shape[1:]), dtype=self._torch.float32,
                                    pin_memory=True)
            self._buffers["host_out"] = out
        return out[: shape[0]]

    def own_compute_ms(self) -> list[float]:
        return list(self._device_ms)

    def describe(self) -> dict[str, Any]:
        torch = self._torch
        on_cuda = self._cuda
        facts: dict[str, Any] = {
            "runtime": f"torch {torch.__version__}",
            "device": str(self._device),
            "device_name": torch.cuda.get_device_name(self._device) if on_cuda
            else environment.cpu_model(),
            "precision": self._chip.precision,
            "channels_last": self._chip.channels_last,
            "intra_op_threads": torch.get_num_threads(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark if on_cuda else None,
            "tf32": (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
            if on_cuda else None,
            "compile": self._chip.compile,
            "cuda_graphs": self._chip.cuda_graphs,
        }
        if self._static:
            facts.update({
                "static_shapes": self._shapes,
                "padded_calls": self._padded_calls,
                "static_shape_note": "a shorter batch runs padded to the static shape; its "
                                     "padding rows' logits are dropped",
            })
        if self._chip.compile:
            facts["compile_s"] = self.compile_s
            facts["compile_note"] = ("wall seconds of the first call per static shape "
                                     "(compilation plus that one call), outside every timed span")
            facts["compile_cache_dir"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default")
        if self._chip.cuda_graphs:
            facts["graph_capture_s"] = self.graph_capture_s
        if on_cuda:
            facts["pinned_host_memory"] = True
            facts["timed_span"] = (
                "host batch into pinned memory, non_blocking copy to the GPU, cast to the "
                "precision and layout, forward" + (" (CUDA graph replay)" if
                                                   self._chip.cuda_graphs else "")
                + ", logits cast to float32 and copied to pinned host memory, then "
                "Stream.synchronize(): one synchronize per call, copies inside the span")
            facts["own_compute_ms"] = DEVICE_TIMER
        else:
            facts["timed_span"] = ("host batch cast to the precision and layout, forward, "
                                   "logits as float32 on the host")
        return facts


def open_session(model_path: Path, settings: SessionSettings, device: int) -> TorchSession:
    return TorchSession(model_path, settings, device)
