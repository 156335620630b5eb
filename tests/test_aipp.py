"""model.preprocess.on_device=true on Ascend: the aipp.cfg written from the recipe
(runner/backends/aipp.py), checked against a real ModelZoo file; the stand-in atc parsing it and
refusing what atc refuses; the stand-in runtime applying AIPP's fp16 arithmetic, on every chip
generation the stand-ins cover (ascend310, ascend310p3, ascend910b) and ais_bench release."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from runner.backends import ConversionError, aipp, ais_bench, ascend
from runner.config import Normalization
from runner.data.transforms import normalize
from runner.errors import ConfigError
from runner.models import build
from runner.stages.export import export_onnx, onnx_spec
from tests.conftest import Workspace, run_config
from tests.standins import GENERATIONS, AscendStandins, install

STANDIN_MODULES = ("ais_bench", "ais_bench.infer", "ais_bench.infer.interface",
                   "ais_bench.infer.interface_check", "aclruntime")
# every chip generation the stand-ins cover: (its overrides, what npu-smi lists)
CHIPS = {
    "ascend310": (("chip=ascend310",), "310"),
    "ascend310p3": (("chip=ascend310p3",), "310P3"),
    "ascend910b": (("chip=ascend910b", "chip.soc_version=Ascend910B3"), "910B3"),
}

# The fields of a real static AIPP file of the Ascend ModelZoo, for a torchvision-normalized
# RGB model: Ascend/ModelZoo-PyTorch, ACL_PyTorch/built-in/cv/InceptionV3_for_Pytorch/
# inceptionv3_aipp.cfg at commit 5a22e9bdc89d540a3337653aa358ee4b966d6995 (299 x 299 input;
# mean_chn_*, csc_switch and rbuv_swap_switch are not set there: their defaults, 0 and false)
MODELZOO_INCEPTIONV3 = {
    "aipp_mode": "static", "input_format": "RGB888_U8", "src_image_size_w": "299",
    "src_image_size_h": "299", "crop": "false", "min_chn_0": "123.675", "min_chn_1": "116.28",
    "min_chn_2": "103.53", "var_reci_chn_0": "0.0171247538316637",
    "var_reci_chn_1": "0.0175070028011204", "var_reci_chn_2": "0.0174291938997821",
}
TEMPLATE_DEFAULTS = {"csc_switch": "false", "rbuv_swap_switch": "false", "mean_chn_0": "0",
                     "mean_chn_1": "0", "mean_chn_2": "0"}


def _recipe(**changes: object) -> Normalization:
    base = {"divide_by_255": True, "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "channel_order": "RGB", "layout": "NCHW",
            "on_device": True}
    return Normalization(**{**base, **changes})  # type: ignore[arg-type]


def test_the_aipp_cfg_has_the_modelzoo_files_fields_and_values() -> None:
    fields = aipp.parse(aipp.from_recipe(_recipe(), 299).render())
    assert set(fields) == set(MODELZOO_INCEPTIONV3) | set(TEMPLATE_DEFAULTS)
    for key, expected in {**MODELZOO_INCEPTIONV3, **TEMPLATE_DEFAULTS}.items():
        if key.startswith(("min_chn", "var_reci")):
            # the example's values are written to 16 significant digits
            assert float(fields[key]) == pytest.approx(float(expected), rel=1e-14), key
        else:
            assert fields[key] == expected, key


def test_bgr_and_a_0_to_255_recipe() -> None:
    # MLPerf's ResNet-50 recipe (conf/model/resnet50_mlperf.yaml: no /255, mean subtraction
    # only), for a model taking BGR
    cfg = run_config("model=resnet50_mlperf", "chip=ascend310p3", "model.preprocess.on_device=true",
                     "model.preprocess.channel_order=BGR")
    settings = ais_bench.convert_settings(cfg)
    fields = aipp.parse(settings.aipp_cfg)
    recipe = cfg.model.preprocess
    assert fields["rbuv_swap_switch"] == "true"  # the model's BGR, swapped before normalizing
    for index in range(3):
        assert float(fields[f"min_chn_{index}"]) == recipe.mean[index]
        assert float(fields[f"var_reci_chn_{index}"]) == 1.0 / recipe.std[index]
    assert fields["src_image_size_w"] == fields["src_image_size_h"] == str(recipe.crop)


@pytest.mark.parametrize(("override", "named"), [
    ("model.preprocess.mean=[-0.1,0.456,0.406]", "model.preprocess.mean"),  # min_chn < 0
    ("model.preprocess.mean=[1.2,0.456,0.406]", "model.preprocess.mean"),  # min_chn > 255
    ("model.preprocess.std=[0.00000001,0.224,0.225]", "model.preprocess.std"),  # > 65504
])
def test_a_recipe_aipp_cannot_express_is_refused_when_planned(override: str, named: str) -> None:
    cfg = run_config("chip=ascend310p3", "model.preprocess.on_device=true", override)
    with pytest.raises(ConfigError) as refused:
        ais_bench.convert_settings(cfg)
    message = str(refused.value)
    assert message.startswith(named) and "on_device=false" in message and "\n" not in message


def test_the_float_route_passes_no_aipp_cfg() -> None:
    settings = ais_bench.convert_settings(run_config("chip=ascend310p3"))
    assert settings.aipp_cfg == ""
    on_device = ais_bench.convert_settings(
        run_config("chip=ascend310p3", "model.preprocess.on_device=true"))
    assert on_device.aipp_cfg and on_device != settings  # a key of its own
    assert on_device.atc_arguments == settings.atc_arguments  # the same ONNX, shape and mode


# --- the stand-ins ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> AscendStandins:
    return install(tmp_path_factory.mktemp("ascend-standins"))


@pytest.fixture(scope="module")
def alexnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = run_config("model.weights=random")
    target = tmp_path_factory.mktemp("onnx") / "model.onnx"
    with torch.no_grad():
        export_onnx(build.build(cfg.model.arch, cfg.model.arch_kwargs, None, seed=0),
                    onnx_spec(cfg), target)
    return target


@pytest.fixture
def use_standins(standins: AscendStandins,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AscendStandins]]:
    """In this process: `use(**choices)` makes the stand-ins visible, as test_ascend does."""

    def use(**choices: object) -> AscendStandins:
        env = standins.env(**choices)  # type: ignore[arg-type]
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        for site in env["PYTHONPATH"].split(":"):
            if site:
                monkeypatch.syspath_prepend(site)
        for name in STANDIN_MODULES:
            monkeypatch.delitem(sys.modules, name, raising=False)
        importlib.invalidate_caches()
        ascend.npu_smi_info.cache_clear()
        standins.clear_calls()
        return standins

    yield use
    for name in STANDIN_MODULES:
        sys.modules.pop(name, None)
    ascend.npu_smi_info.cache_clear()


GOOD = aipp.from_recipe(_recipe(), 224).render()


@pytest.mark.parametrize(("edit", "field"), [
    (("}", "    resize_factor : 2\n}"), "resize_factor"),  # not a field of the template
    (("min_chn_0 : 123.675", "min_chn_0 : 300.0"), "min_chn_0"),
    (("var_reci_chn_1 : ", "var_reci_chn_1 : 70000.0\n    # was "), "var_reci_chn_1"),
    (("mean_chn_2 : 0", "mean_chn_2 : 1.5"), "mean_chn_2"),
    (("mean_chn_2 : 0", "mean_chn_2 : 256"), "mean_chn_2"),
    (("crop : false", "crop : maybe"), "crop"),
    (("src_image_size_w : 224", "src_image_size_w : 256"), "src_image_size_w"),
    (("}", "    min_chn_0 : 1.0\n}"), "min_chn_0"),  # given twice
    (("input_format : RGB888_U8", "input_format : RGB24"), "input_format"),
])
def test_the_standin_atc_refuses_a_bad_aipp_field_in_one_line(
        use_standins, alexnet_onnx: Path, tmp_path: Path, edit: tuple[str, str],
        field: str) -> None:
    use_standins()
    old, new = edit
    assert old in GOOD
    config_file = tmp_path / "aipp.cfg"
    config_file.write_text(GOOD.replace(old, new, 1))
    settings = ais_bench.convert_settings(run_config("chip=ascend310p3", "bs=2"))
    with pytest.raises(ConversionError) as failed:
        ascend.run_atc(alexnet_onnx, tmp_path,
                       [*settings.atc_arguments, f"--insert_op_conf={config_file}"])
    message = str(failed.value)
    assert "E10001" in message and f"[{field}" in message and "\n" not in message


def _fp16_aipp(crops: np.ndarray, fields: dict[str, str]) -> np.ndarray:
    """AIPP's arithmetic computed in numpy's float16, independently of the stand-in: channel
    swap, then (pixel - mean_chn - min_chn) * var_reci_chn, each step an fp16 operation."""
    pixels = crops[..., ::-1] if fields["rbuv_swap_switch"] == "true" else crops
    half = pixels.astype(np.float16)
    mean = np.array([float(fields[f"mean_chn_{i}"]) for i in range(3)], dtype=np.float16)
    low = np.array([float(fields[f"min_chn_{i}"]) for i in range(3)], dtype=np.float16)
    reci = np.array([float(fields[f"var_reci_chn_{i}"]) for i in range(3)], dtype=np.float16)
    out = ((half - mean) - low) * reci
    return np.ascontiguousarray(out.astype(np.float32).transpose(0, 3, 1, 2))


def _crops(count: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    crops = rng.integers(0, 256, size=(count, 224, 224, 3), dtype=np.uint8)
    crops[0].reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]
    return crops


# every chip (at the last generation, msit) and every generation (on the 310P3): each pair
# is ~17 s of a 244 MB AlexNet through the stand-in atc, and AIPP's arithmetic does not depend
# on the two together
CHIP_GENERATIONS = sorted({*((chip, GENERATIONS[-1]) for chip in CHIPS),
                           *(("ascend310p3", generation) for generation in GENERATIONS)})


@pytest.mark.parametrize(("chip", "generation"), CHIP_GENERATIONS)
def test_the_aipp_om_takes_uint8_and_computes_as_the_chip_in_fp16(
        use_standins, alexnet_onnx: Path, tmp_path: Path, chip: str, generation: str) -> None:
    overrides, listed = CHIPS[chip]
    standins = use_standins(generation=generation, chips=listed)
    common = (*overrides, "bs=2", "model.weights=random")
    on_device_cfg = run_config(*common, "model.preprocess.on_device=true")
    float_cfg = run_config(*common)
    om_dir, float_dir = tmp_path / "aipp", tmp_path / "float"
    om_dir.mkdir()
    float_dir.mkdir()
    settings = ais_bench.convert_settings(on_device_cfg)
    om, facts = ais_bench.convert(alexnet_onnx, om_dir, settings)
    float_om, _ = ais_bench.convert(alexnet_onnx, float_dir, ais_bench.convert_settings(float_cfg))
    assert (om_dir / "aipp.cfg").read_text() == settings.aipp_cfg
    assert facts["aipp_cfg"] == "aipp.cfg"
    atc_call = standins.calls("atc")[0]
    assert f"--insert_op_conf={om_dir / 'aipp.cfg'}" in atc_call["argv"]
    session_settings = ais_bench.SessionSettings.from_config(on_device_cfg)
    session = ais_bench.open_session(om, session_settings, 0)
    float_session = ais_bench.open_session(float_om, session_settings, 0)
    assert session.describe()["om_input_shape"] == [2, 224, 224, 3]
    crops = _crops(3)  # a short last batch: padded with copies of its first image
    fed = normalize(crops, on_device_cfg.model.preprocess.normalization())
    assert fed.dtype == np.uint8 and fed.nbytes * 4 == normalize(
        crops, float_cfg.model.preprocess.normalization()).nbytes
    logits = np.concatenate([session.run(fed[:2]), session.run(fed[2:])])
    # the OM's first nodes compute what AIPP computes in fp16: the same logits as the OM without
    # AIPP fed numpy's fp16 AIPP arithmetic
    by_hand = _fp16_aipp(crops, aipp.parse(settings.aipp_cfg))
    expected = np.concatenate([float_session.run(by_hand[:2]), float_session.run(by_hand[2:])])
    np.testing.assert_array_equal(logits, expected)
    # ... which is not the float route's (fp32 normalization on the host), though close to it
    host = normalize(crops, float_cfg.model.preprocess.normalization())
    float_route = np.concatenate([float_session.run(host[:2]), float_session.run(host[2:])])
    difference = np.abs(logits - float_route).max()
    assert 0 < difference <= float_cfg.parity.tolerance.fp16.max_abs_diff


@pytest.mark.parametrize("generation", ["2023", "2024-06"])
def test_a_dynamic_batch_aipp_om(use_standins, alexnet_onnx: Path, tmp_path: Path,
                                 generation: str) -> None:
    standins = use_standins(generation=generation)
    cfg = run_config("chip=ascend310p3", "bs=2", "chip.dynamic_batch_sizes=[2,4]",
                     "model.weights=random", "model.preprocess.on_device=true")
    om, _ = ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))
    assert "--dynamic_batch_size=2,4" in standins.calls("atc")[0]["argv"]
    session = ais_bench.open_session(om, ais_bench.SessionSettings.from_config(cfg), 0)
    assert session.describe()["om_input_shape"] == [-1, 224, 224, 3]
    crops = _crops(3)
    together = session.run(crops)  # the gear of 4, one padding row
    apart = np.concatenate([session.run(crops[:2]), session.run(crops[2:])])
    np.testing.assert_array_equal(together, apart)


@pytest.mark.slow
@pytest.mark.parametrize("chip", list(CHIPS))
def test_an_aipp_run_end_to_end_on_every_chip(workspace: Workspace, standins: AscendStandins,
                                              fast_benchmark: tuple[str, ...], chip: str) -> None:
    overrides, listed = CHIPS[chip]
    standins.clear_calls()
    workspace.run(*overrides, "model=alexnet", "bs=4", "dataset=synthetic",
                  "dataset.synthetic.num_images=6", "dataset.synthetic.seed=35",
                  "model.weights=random", "model.preprocess.on_device=true", *fast_benchmark,
                  env=standins.env(generation="2024-06", chips=listed))
    (run,) = workspace.runs()
    assert run.info.status == "FINISHED"
    assert run.data.tags["preprocess.route"] == "on_device"
    (call,) = standins.calls("atc")
    assert any(a.startswith("--insert_op_conf=") for a in call["argv"])
    infers = standins.calls("ais_bench", "infer")
    assert infers[0]["shapes"] == [[4, 224, 224, 3]]  # uint8 crops, as cached
    tolerance = run_config().parity.tolerance.fp16
    assert 0 < run.data.metrics["parity_max_abs_diff"] <= tolerance.max_abs_diff
    artifacts = Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, tracking_uri=workspace.tracking_uri))
    logged = (artifacts / "stages" / "convert" / "aipp.cfg").read_text()
    assert aipp.parse(logged)["input_format"] == "RGB888_U8"
    info = json.loads((artifacts / "stages" / "convert" / "info.json").read_text())
    assert info["aipp_cfg"] == "aipp.cfg"


def test_a_recipe_aipp_cannot_express_stops_the_cli_in_one_line(workspace: Workspace) -> None:
    result = workspace.run("chip=ascend310p3", "model.preprocess.on_device=true",
                           "model.preprocess.mean=[-0.1,0.456,0.406]", "model.weights=random",
                           "dataset=synthetic", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("runner: error:")]
    assert "model.preprocess.mean" in line and "min_chn_0" in line
    assert workspace.runs() == []



assert set(GENERATIONS) >= {"2023", "2024-06"}  # the dynamic-batch test's two generations
