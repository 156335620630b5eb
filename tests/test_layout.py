"""`model.preprocess.layout`: NCHW (the default) or NHWC, the model input's layout.

MLPerf's `pre_process_vgg` transposes to NCHW only when asked (`need_transpose`); TensorFlow-origin
graphs take channels-last input. With NHWC the fed tensor is the NCHW one transposed (the same
float32 values), and a model built from a PyTorch checkpoint is exported behind one transpose,
so its ONNX, torch and OM inputs are (N, H, W, 3) and its logits are the NCHW model's.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from runner.backends import ascend
from runner.config import PreprocessRecipe
from runner.data.transforms import normalize
from runner.stages import benchmark
from tests.conftest import Workspace, run_config
from tests.reference import entry, run_logits


@pytest.mark.parametrize("recipe", [
    PreprocessRecipe(),
    PreprocessRecipe(divide_by_255=False, mean=[103.94, 116.78, 123.68], std=[1, 1, 1],
                     channel_order="BGR"),
])
def test_nhwc_tensor_is_the_nchw_tensor_transposed(recipe: PreprocessRecipe) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    nchw = normalize(pixels, recipe.normalization())
    recipe.layout = "NHWC"
    nhwc = normalize(pixels, recipe.normalization())
    assert nhwc.shape == (3, 5, 7, 3) and nhwc.dtype == np.float32
    np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))


def test_every_input_shape_follows_the_layout() -> None:
    cfg = run_config("chip=ascend310p3", "bs=8", "model.preprocess.layout=NHWC")
    assert cfg.model.input_shape(8) == (8, 224, 224, 3)
    assert benchmark.Settings.from_config(cfg).batch.make().shape == (8, 224, 224, 3)
    # atc takes an ONNX model's channels-last input as ND (NHWC is TensorFlow's only)
    arguments = ascend.atc_arguments("x", 8, 224, "NHWC", cfg.chip, "Ascend310P3")
    assert arguments[1:3] == ["--input_format=ND", "--input_shape=x:8,224,224,3"]
    assert ascend.atc_arguments("x", 8, 224, "NCHW", cfg.chip, "Ascend310P3")[1:3] == [
        "--input_format=NCHW", "--input_shape=x:8,3,224,224"]


def test_a_bad_layout_is_one_line_naming_the_key() -> None:
    with pytest.raises(Exception, match=r"^model.preprocess.layout='NWHC' is not one of "
                                        r"NCHW, NHWC$"):
        run_config("model.preprocess.layout=NWHC")


COMMON = ("model=resnet18", "model.weights=random", "dataset=synthetic",
          "dataset.synthetic.num_images=8", "dataset.synthetic.seed=4", "stage=accuracy", "bs=4")


@pytest.mark.slow
def test_an_nhwc_run_computes_the_nchw_runs_logits(workspace: Workspace) -> None:
    workspace.run(*COMMON)
    workspace.run(*COMMON, "model.preprocess.layout=NHWC")
    workspace.run(*COMMON, "model.preprocess.layout=NHWC", "chip=torch_cpu")
    nchw, nhwc, torch_nhwc = workspace.runs()
    for run in (nchw, nhwc, torch_nhwc):
        assert run.info.status == "FINISHED"
        assert run.data.metrics["parity_top1_agreement"] == 1.0
    # the exported graph takes channels-last input, behind one leading transpose
    graph = onnx.load(str(entry(workspace, "export", nhwc) / "model.onnx")).graph
    dims = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [224, 224, 3]
    (first,) = [node for node in graph.node if graph.input[0].name in node.input]
    assert first.op_type == "Transpose"
    assert list(onnx.helper.get_attribute_value(first.attribute[0])) == [0, 3, 1, 2]
    # the same crops, another export; the logits agree with the NCHW model's
    states = workspace.cache_states(nhwc)
    assert states["preprocess"] == "hit" and states["export"] == "miss"
    expected = run_logits(workspace, nchw)
    np.testing.assert_allclose(run_logits(workspace, nhwc), expected, atol=1e-5)
    np.testing.assert_allclose(run_logits(workspace, torch_nhwc), expected, atol=1e-4)
    assert nhwc.data.metrics["top1"] == nchw.data.metrics["top1"]
