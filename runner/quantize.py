"""int8 on the CPU: ONNX Runtime's static quantization of the exported fp32 model.

`chip.precision=int8` on chip=cpu: `onnxruntime.quantization.quantize_static` in QDQ format
(QuantizeLinear/DequantizeLinear pairs around each quantized operator, which ONNX Runtime's CPU
provider fuses into its int8 kernels when the session is opened), uint8 activations and int8
weights (U8S8, see ACTIVATIONS), weights quantized per output channel. The activations' ranges
are calibrated on the first `chip.calibration.num_images` images of the run's dataset (clipped
to its size), decoded and normalized exactly as `infer` feeds them, by
`chip.calibration.method` (MinMax, Entropy or Percentile). The calibration settings are part of
the convert stage's key (`Calibration`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runner.config import Cropping, Normalization, RunConfig
from runner.data.dataset import DatasetSpec, Sample
from runner.data.transforms import load_cropped, normalize

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("runner")

QUANTIZED_MODEL = "model.int8.onnx"
# images per calibration batch: a constant of the method (Entropy's and Percentile's histograms
# are merged batch by batch), not a setting
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class Calibration:
    """Everything the quantization reads: which images, how they are fed, which method."""

    method: str  # MinMax | Entropy | Percentile
    num_images: int  # the first N of the dataset, clipped to its size
    dataset: DatasetSpec
    cropping: Cropping
    normalization: Normalization

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Calibration | None:
        """The run's calibration, or None where the chip does not run int8."""
        if cfg.chip.precision != "int8":
            return None
        recipe = cfg.model.preprocess
        return cls(cfg.chip.calibration.method, cfg.chip.calibration.num_images,
                   DatasetSpec.from_config(cfg), recipe.cropping(), recipe.normalization())

    def samples(self) -> list[Sample]:
        """The calibration images (a synthetic dataset generated first if needed)."""
        return self.dataset.samples()[: self.num_images]


def calibration_batches(calibration: Calibration) -> Iterator[np.ndarray]:
    """float32 batches of the calibration images, normalized as `infer` feeds them."""
    samples = calibration.samples()
    for start in range(0, len(samples), CALIBRATION_BATCH):
        crops = np.stack([load_cropped(s.path, calibration.cropping)
                          for s in samples[start : start + CALIBRATION_BATCH]])
        yield normalize(crops, calibration.normalization)


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over `calibration_batches`."""

    def __init__(self, input_name: str, calibration: Calibration) -> None:
        self._input = input_name
        self._batches = calibration_batches(calibration)
        self.images = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.images += len(batch)
        return {self._input: batch}


# uint8 activations, not int8: ONNX Runtime's CPU provider (1.31) fused only 83 of InceptionV4's
# 149 convolutions into QLinearConv with int8 activations (S8S8), leaving in float each one whose
# input or output tensor several nodes share (an Inception block's branches), and that model ran
# slower than fp32; with uint8 activations (U8S8, the combination ONNX Runtime's quantization
# guide names for x86-64's AVX2/AVX512 kernels) all 149 fuse. Weights stay int8, per channel.
ACTIVATIONS = "QUInt8"

# per-channel DequantizeLinear (its `axis`) needs opset 13; the guides export at opset 11
MIN_OPSET = 13
# quantize_static gives Entropy 128 histogram bins for 128 quantized bins, and no way to change
# them: its KL search can then only pick the whole range, MinMax's (measured: every scale equal
# to MinMax's). Entropy is calibrated here with 512 bins instead (thresholds from a quarter of
# the range to all of it) and handed to quantize_static as its calibration cache. Its KL search
# is Python loops, about bins/2 x 128 steps per tensor: 2048 bins (TensorRT's) took 244 s for a
# small ResNet-18 on this project's loaded 2-core VM, which 512 bins cuts about fivefold.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 512, 128


def _for_quantization(onnx_path: Path) -> tuple[onnx.ModelProto, str]:
    """The exported model at opset MIN_OPSET or later, and its input's name."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(onnx_path))
    _inline_constant_identities(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        model = version_converter.convert_version(model, MIN_OPSET)
    initializers = {i.name for i in model.graph.initializer}
    name = next(i.name for i in model.graph.input if i.name not in initializers)
    return model, name


def _inline_constant_identities(model: onnx.ModelProto) -> int:
    """Turn each Identity of an initializer into an initializer of its own; the number turned.

    torch.onnx.export keeps one copy of equal tensors and feeds the others through Identity
    nodes: InceptionV4's batch-norm-folded convolution biases (138 of its 149 convolutions with
    untrained weights, whose folded biases are all equal). quantize_static quantizes a bias only
    where it is an initializer; a bias behind an Identity stays float, and ONNX Runtime then
    cannot fuse that convolution into its int8 kernel: it runs in float between Dequantize
    nodes, slower than the fp32 model (measured 0.67x fp32 before this)."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    inlined = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers
               and n.output[0] not in graph_outputs]
    for node in inlined:
        # a copy per consumer name: each convolution gets its own bias to quantize with its
        # own input and weight scales
        copy = numpy_helper.from_array(numpy_helper.to_array(initializers[node.input[0]]),
                                       node.output[0])
        graph.initializer.append(copy)
        graph.node.remove(node)
    return len(inlined)


def _entropy_ranges(model: onnx.ModelProto, reader: _Reader, work: Path) -> Path:
    """Entropy calibration with ENTROPY_BINS bins, saved as quantize_static's cache file."""
    import onnx
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )

    model_path = work / "calibration_input.onnx"
    onnx.save_model(model, str(model_path))
    calibrator = create_calibrator(
        model_path, None, augmented_model_path=str(work / "augmented_model.onnx"),
        calibrate_method=CalibrationMethod.Entropy, providers=["CPUExecutionProvider"],
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS})
    calibrator.collect_data(reader)
    cache = work / "calibration.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def quantize(onnx_path: Path, out_dir: Path, calibration: Calibration,
             ) -> tuple[Path, dict[str, Any]]:
    """The int8 QDQ model made from the fp32 ONNX file, in out_dir; its path and facts."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model, input_name = _for_quantization(onnx_path)
    reader = _Reader(input_name, calibration)
    CalibrationDataReader.register(_Reader)
    target = out_dir / QUANTIZED_MODEL
    log.info("convert: int8 calibration (%s) on the first %d images", calibration.method,
             calibration.num_images)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".calibration-") as work:
        cache = (_entropy_ranges(model, reader, Path(work)) if calibration.method == "Entropy"
                 else None)
        quantize_static(
            model, target, None if cache else reader, quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=getattr(QuantType, ACTIVATIONS),
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, calibration.method),
            calibration_providers=["CPUExecutionProvider"], calibration_cache_path=cache,
        )
    for leftover in out_dir.glob("*augmented*"):  # the calibration's own instrumented model
        leftover.unlink()
    if not reader.images:
        raise RuntimeError("int8 calibration read no image (the dataset is empty)")
    facts = {"onnxruntime": ort.__version__, "quantization": "static, QDQ, uint8 activations "
             "and int8 weights (U8S8), weights per channel",
             "calibration_method": calibration.method, "calibration_images": reader.images}
    return target, facts
