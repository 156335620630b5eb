"""int8 on the CPU (runner/quantize.py): ONNX Runtime's static quantization of the exported
model, calibrated on the run's own images, run by real ONNX Runtime sessions and compared with
PyTorch's fp32 logits by the parity stage.

Random weights (all tests run without checkpoints) give small logits: ResNet-18's largest
|logit| here is ~2.4 and AlexNet's ~0.03, where a trained model's is 10-30. The default int8
tolerance's absolute floor (0.5) would pass nearly anything at that scale, so these tests hold
the int8 logits to their error relative to the image's logit scale (parity_max_rel_diff, which
does not depend on the scale) and to top-1 agreement on images whose top-1 is not a near tie
(ResNet-18's random logits are well separated: every image agrees in practice)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from runner import quantize
from runner.artifacts import LOGITS_INDEX, PreprocessedDataset
from runner.backends import onnxruntime as ort_backend
from runner.config import RunConfig
from runner.data.transforms import normalize
from runner.models import build
from runner.stages import convert, infer, parity, preprocess, reference
from runner.stages.export import export_onnx, onnx_spec
from tests.conftest import run_config

# a small ResNet-18 input keeps each quantization ~2 s on two cores
SMALL = ("model=resnet18", "model.weights=random", "model.preprocess.crop=64",
         "model.preprocess.resize=72", "bs=4", "preprocess.workers=1", "chip.precision=int8")


def _config(root: Path, cache: Path, *overrides: str) -> RunConfig:
    return run_config(*SMALL, "dataset=imagenet", f"dataset.root={root}",
                      f"paths.cache_dir={cache}", *overrides)


@pytest.fixture(scope="module")
def exported(generated_images: Path, tmp_path_factory: pytest.TempPathFactory,
             ) -> dict[str, Path]:
    """The preprocessed images, the exported fp32 ONNX and PyTorch's reference logits."""
    folder = tmp_path_factory.mktemp("int8")
    cfg = _config(generated_images, folder / "cache")
    data = folder / "dataset"
    data.mkdir()
    preprocess.run(preprocess.Settings.from_config(cfg), {}, data)
    net = build.build(cfg.model.arch, cfg.model.arch_kwargs, None, cfg.seed)
    with torch.no_grad():
        export_onnx(net, onnx_spec(cfg), folder / "model.onnx")
    (folder / "reference").mkdir()
    reference.run(reference.Settings.from_config(cfg), {"dataset": data}, folder / "reference")
    return {"dataset": data, "onnx": folder / "model.onnx", "root": generated_images,
            "reference_logits": folder / "reference" / LOGITS_INDEX, "folder": folder}


def _quantized(exported: dict[str, Path], name: str, *overrides: str,
               ) -> tuple[RunConfig, Path, dict]:
    cfg = _config(exported["root"], exported["folder"] / "cache", *overrides)
    out = exported["folder"] / name
    out.mkdir()
    output = convert.run(convert.Settings.from_config(cfg), {"onnx": exported["onnx"]}, out)
    return cfg, out / output.artifacts["model"], output.info


def _scales(model_path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(model_path))
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
            if i.name.endswith("_scale")}


def test_int8_is_a_qdq_model_with_per_channel_weights_close_to_fp32(
        exported: dict[str, Path]) -> None:
    cfg, model_path, info = _quantized(exported, "minmax")
    assert model_path.name == quantize.QUANTIZED_MODEL
    # clipped to the dataset: 300 asked, 20 images there
    assert info["calibration_images"] == 20 and info["calibration_method"] == "MinMax"
    model = onnx.load(str(model_path))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = [i for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert weights, "no int8 convolution weight: the model was not quantized"
    # per channel: one scale per output channel of the first convolution (64)
    assert max(len(s.reshape(-1)) for s in _scales(model_path).values()) >= 64
    assert not list(model_path.parent.glob("*augmented*"))  # the calibration's model is gone

    (exported["folder"] / "infer").mkdir()
    infer.run(infer.Settings.from_config(cfg), {"model": model_path,
                                                "dataset": exported["dataset"]},
              exported["folder"] / "infer")
    (exported["folder"] / "parity").mkdir()
    output = parity.run(parity.Settings.from_config(cfg),
                        {"logits": exported["folder"] / "infer" / LOGITS_INDEX,
                         "reference_logits": exported["reference_logits"],
                         "dataset": exported["dataset"]}, exported["folder"] / "parity")
    metrics = output.metrics
    assert output.info["precision"] == "int8"
    # really int8: fp32 ONNX Runtime agrees with PyTorch to ~1e-6 of the scale (test_parity)
    assert metrics["parity_max_rel_diff"] > 1e-3
    # but close: a broken calibration (ranges of unnormalized pixels, or of no image) saturates
    # or zeroes activations, and the error reaches the logit scale itself
    assert metrics["parity_max_rel_diff"] < 0.15
    assert metrics["parity_top1_agreement"] >= 0.9
    assert metrics["parity_bound_used"] <= 1.0


def test_the_calibration_settings_make_another_model(exported: dict[str, Path]) -> None:
    _, minmax, _ = _quantized(exported, "minmax-4", "chip.calibration.num_images=4")
    _, percentile, info = _quantized(exported, "percentile-4", "chip.calibration.num_images=4",
                                     "chip.calibration.method=Percentile")
    assert info["calibration_images"] == 4 and info["calibration_method"] == "Percentile"
    ours, theirs = _scales(minmax), _scales(percentile)
    assert ours.keys() == theirs.keys()
    assert any(not np.array_equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
def test_entropy_is_not_minmax(exported: dict[str, Path]) -> None:
    """quantize_static's own Entropy (128 bins for 128 quantized bins) gave every scale of
    MinMax's; with the runner's 512 bins the KL search clips some activation ranges (~13 s: the
    search is Python loops)."""
    _, minmax, _ = _quantized(exported, "minmax-entropy-4", "chip.calibration.num_images=4")
    _, entropy, info = _quantized(exported, "entropy-4", "chip.calibration.num_images=4",
                                  "chip.calibration.method=Entropy")
    assert info["calibration_method"] == "Entropy" and info["calibration_images"] == 4
    ours, theirs = _scales(minmax), _scales(entropy)
    clipped = [k for k in ours if not np.array_equal(ours[k], theirs[k])]
    assert clipped and all(np.all(theirs[k] <= ours[k] * (1 + 1e-6)) for k in clipped)
    assert not list(entropy.parent.glob(".calibration-*"))  # its work folder is gone


def test_the_calibration_images_are_fed_as_infer_feeds_them(exported: dict[str, Path]) -> None:
    cfg = _config(exported["root"], exported["folder"] / "cache", "chip.calibration.num_images=5")
    calibration = ort_backend.convert_settings(cfg).calibration
    assert calibration is not None
    batches = list(quantize.calibration_batches(calibration))
    assert [len(b) for b in batches] == [5]
    data = PreprocessedDataset(exported["dataset"])
    crops = data.read(0, 5)
    np.testing.assert_array_equal(batches[0], normalize(crops, cfg.model.preprocess))


def test_fp32_has_no_calibration() -> None:
    cfg = run_config("model.weights=random", "dataset=synthetic")
    assert ort_backend.convert_settings(cfg).calibration is None


def test_the_calibration_is_logged_as_params_where_the_chip_runs_int8() -> None:
    from omegaconf import OmegaConf

    from runner import tracking
    from tests.conftest import compose_config

    def params(*overrides: str) -> dict:
        tree = OmegaConf.to_container(compose_config("debug=smoke", *overrides), resolve=True)
        return tracking.run_params(tree, list(overrides))

    int8 = params("chip.precision=int8", "chip.calibration.num_images=50")
    assert int8["chip.precision"] == "int8"
    assert int8["chip.calibration.method"] == "MinMax"
    assert int8["chip.calibration.num_images"] == 50
    assert "chip.calibration.method" not in params()  # fp32 reads no calibration


def test_every_convolution_bias_is_quantized(exported: dict[str, Path]) -> None:
    """A float bias keeps its convolution out of ONNX Runtime's int8 kernels (InceptionV4 ran
    0.67x fp32 so). The exporter feeds equal biases (batch-norm folded, untrained) through
    Identity nodes, which the quantizer does not see as initializers."""
    exported_model = onnx.load(str(exported["onnx"]))
    initializers = {i.name for i in exported_model.graph.initializer}
    behind_identity = {n.output[0] for n in exported_model.graph.node
                       if n.op_type == "Identity" and n.input[0] in initializers}
    convolutions = [n for n in exported_model.graph.node if n.op_type == "Conv"]
    # the case this test is about is there: ResNet-18's folded biases are equal
    assert any(len(c.input) > 2 and c.input[2] in behind_identity for c in convolutions)

    _, model_path, _ = _quantized(exported, "biases")
    model = onnx.load(str(model_path))
    int32 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32}
    dequantized_from_int32 = {n.output[0] for n in model.graph.node
                              if n.op_type == "DequantizeLinear" and n.input[0] in int32}
    biases = [c.input[2] for c in model.graph.node if c.op_type == "Conv" and len(c.input) > 2]
    assert len(biases) == len(convolutions)
    assert all(b in dequantized_from_int32 for b in biases), \
        [b for b in biases if b not in dequantized_from_int32]


def test_onnx_runtime_runs_every_convolution_in_int8(exported: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """What makes int8 fast: the CPU provider fuses each DequantizeLinear-Conv-QuantizeLinear
    group into one QLinearConv when it opens the model. With int8 activations it left in float
    each convolution whose tensor several nodes share (a residual block's input, an Inception
    block's branches); with the uint8 activations quantize.ACTIVATIONS picks, none."""
    import onnxruntime as ort

    _, model_path, _ = _quantized(exported, "fused")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    # the level below the layout transforms, which only the provider that ran them can read
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    ops = Counter(node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    convolutions = sum(1 for n in onnx.load(str(exported["onnx"])).graph.node
                       if n.op_type == "Conv")
    assert ops["QLinearConv"] == convolutions and not ops["Conv"] and not ops["FusedConv"], ops
