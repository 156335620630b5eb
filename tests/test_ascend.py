"""The Ascend path (atc + ais_bench) against stand-ins that reproduce each real ais_bench
release (tests/standins/, GENERATIONS; each behaviour cites the real file and commit): the exact
atc command, the OM cache key, the precision mode per chip and its numerics, every release's
infer/dymbatch/timing API, the 2024-06 path checks, the padding of a short batch, npu-smi per
device id, the errors when CANN, atc or ais_bench is missing, and results flowing through
evaluate and parity into MLflow. No NPU is involved anywhere."""

from __future__ import annotations

import importlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch

from runner.backends import ConversionError, SessionSettings, ais_bench, ascend
from runner.errors import ConfigError, DeviceRuntimeError, ToolMissingError
from runner.models import build
from runner.settings import key_settings
from runner.stages import convert as convert_stage
from runner.stages.export import export_onnx, onnx_spec
from tests import reference
from tests.conftest import Workspace, run_config
from tests.standins import CANN_VERSION, GENERATIONS, AscendStandins, install

STANDIN_MODULES = ("ais_bench", "ais_bench.infer", "ais_bench.infer.interface",
                   "ais_bench.infer.interface_check", "aclruntime")
# a chip whose OM computes in true fp32 (must_keep_origin_dtype), for tests of exact logits
FP32_CHIP = ("chip=ascend910b", "chip.soc_version=Ascend910B3", "chip.precision=fp32")


@pytest.fixture(scope="module")
def standins(tmp_path_factory: pytest.TempPathFactory) -> AscendStandins:
    return install(tmp_path_factory.mktemp("ascend-standins"))


@pytest.fixture(scope="module")
def alexnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = run_config("model.weights=random")
    target = tmp_path_factory.mktemp("onnx") / "model.onnx"
    with torch.no_grad():
        net = build.build(cfg.model.arch, cfg.model.arch_kwargs, None, seed=0)
        export_onnx(net, onnx_spec(cfg), target)
    return target


@pytest.fixture(scope="module")
def resnet18_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = run_config("model=resnet18", "model.weights=random")
    target = tmp_path_factory.mktemp("onnx") / "model.onnx"
    with torch.no_grad():
        net = build.build(cfg.model.arch, cfg.model.arch_kwargs, None, seed=0)
        export_onnx(net, onnx_spec(cfg), target)
    return target


def onnx_cpu(onnx_path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


@pytest.fixture
def use_standins(standins: AscendStandins,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AscendStandins]]:
    """In this process: `use(**choices)` makes exactly the chosen stand-ins visible."""

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


def test_atc_command_is_the_guides(use_standins, alexnet_onnx: Path, tmp_path: Path) -> None:
    standins = use_standins()
    cfg = run_config("chip=ascend310p3", "bs=4", "model.weights=random")
    om_path, facts = ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))
    (call,) = standins.calls("atc")
    assert call["argv"] == [
        f"--model={alexnet_onnx}", "--framework=5", f"--output={tmp_path}/model",
        "--input_format=NCHW", "--input_shape=actual_input_1:4,3,224,224",
        "--soc_version=Ascend310P3", "--precision_mode=force_fp16", "--log=error",
    ]
    assert call["cwd"] == str(tmp_path)
    assert om_path == tmp_path / "model.om"
    assert facts["atc_command"] == ["atc", *call["argv"]]
    assert facts["cann"] == CANN_VERSION
    assert "ATC run success" in (tmp_path / "atc.log").read_text()


def test_atc_options_and_precision(use_standins, alexnet_onnx: Path, tmp_path: Path) -> None:
    standins = use_standins(chips="910B3")
    cfg = run_config("chip=ascend910b", "bs=1", "chip.precision=fp32", "model.weights=random",
                     "+chip.atc_options.op_select_implmode=high_performance",
                     "+chip.atc_options.log=info")
    ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))
    (call,) = standins.calls("atc")
    assert call["argv"][-4:] == ["--soc_version=Ascend910B3",
                                 "--precision_mode=must_keep_origin_dtype", "--log=info",
                                 "--op_select_implmode=high_performance"]
    managed = run_config("chip=ascend310", "+chip.atc_options.soc_version=Ascend310P3")
    with pytest.raises(ConfigError, match=r"chip.atc_options.soc_version is set by the runner"):
        ais_bench.convert_settings(managed)


@pytest.mark.parametrize(("overrides", "mode"), [
    (("chip=ascend310",), "force_fp16"),
    (("chip=ascend310p3",), "force_fp16"),
    (("chip=ascend910b",), "force_fp16"),
    (("chip=ascend910b", "chip.precision=fp32"), "must_keep_origin_dtype"),
    (("chip=ascend310p3", "+chip.atc_options.precision_mode=allow_fp32_to_fp16"),
     "allow_fp32_to_fp16"),
])
def test_precision_mode_per_soc(use_standins, overrides: tuple[str, ...], mode: str) -> None:
    use_standins(chips="910B2")
    arguments = ais_bench.convert_settings(run_config(*overrides)).atc_arguments
    assert f"--precision_mode={mode}" in arguments


@pytest.mark.parametrize(("overrides", "message"), [
    (("chip=ascend310p3", "chip.precision=fp32"),
     r"^chip.precision=fp32 on Ascend310P3: its cube unit computes .* in fp16 only"),
    (("chip=ascend310", "chip.precision=fp32"), r"^chip.precision=fp32 on Ascend310: "),
    (("chip=ascend910b", "chip.precision=fp32", "+chip.atc_options.precision_mode=force_fp32"),
     r"^chip.atc_options.precision_mode=force_fp32 computes matrix operators from fp16 inputs"),
])
def test_fp32_is_refused_where_it_would_not_be_fp32(use_standins, overrides: tuple[str, ...],
                                                    message: str) -> None:
    use_standins(chips="910B2")
    with pytest.raises(ConfigError, match=message):
        ais_bench.convert_settings(run_config(*overrides))


def test_precision_modes_compute_as_the_npu_would(use_standins, resnet18_onnx: Path,
                                                  tmp_path: Path) -> None:
    """The stand-in OM's numerics per atc precision mode, against fp32 ONNX Runtime: fp16
    everywhere (force_fp16) within the fp16 tolerance but not exact; fp16-input cube operators
    (force_fp32) already beyond the fp32 tolerance, which is why chip.precision=fp32 maps to
    must_keep_origin_dtype, which is exact, and only on the 910B."""
    use_standins()
    batch = np.random.default_rng(4).standard_normal((2, 3, 224, 224), dtype=np.float32)
    expected = onnx_cpu(resnet18_onnx, batch)
    tolerances = run_config().parity.tolerance
    differences = {}
    for name, overrides in {
        "force_fp16": ("chip=ascend310p3",),
        "allow_fp32_to_fp16": ("chip=ascend310p3",
                               "+chip.atc_options.precision_mode=allow_fp32_to_fp16"),
        "force_fp32": ("chip=ascend310p3", "+chip.atc_options.precision_mode=force_fp32"),
        "must_keep_origin_dtype": FP32_CHIP,
    }.items():
        cfg = run_config("model=resnet18", "model.weights=random", "bs=2", *overrides)
        (tmp_path / name).mkdir()
        om_path, _ = ais_bench.convert(resnet18_onnx, tmp_path / name,
                                       ais_bench.convert_settings(cfg))
        logits = ais_bench.open_session(om_path, SessionSettings.from_config(cfg), 0).run(batch)
        differences[name] = float(np.abs(logits - expected).max())
    assert differences["must_keep_origin_dtype"] <= 1e-5
    for name in ("force_fp16", "allow_fp32_to_fp16", "force_fp32"):
        assert tolerances.fp32.max_abs_diff < differences[name] <= tolerances.fp16.max_abs_diff
    fp32_on_310p = run_config("model=resnet18", "chip=ascend310p3",
                              "+chip.atc_options.precision_mode=must_keep_origin_dtype")
    (tmp_path / "refused").mkdir()
    with pytest.raises(ConversionError, match=r"E19999.*Conv has no float32 implementation"):
        ais_bench.convert(resnet18_onnx, tmp_path / "refused",
                          ais_bench.convert_settings(fp32_on_310p))


def test_soc_version_auto_comes_from_npu_smi(use_standins, alexnet_onnx: Path,
                                             tmp_path: Path) -> None:
    standins = use_standins(chips="910B3,910B3")
    cfg = run_config("chip=ascend910b", "bs=2", "model.weights=random")
    ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))
    (call,) = standins.calls("atc")
    assert "--soc_version=Ascend910B3" in call["argv"]
    use_standins(chips="910B3,910B4")
    with pytest.raises(ConfigError, match=r"lists 910B3, 910B4; set chip.soc_version"):
        ais_bench.convert_settings(cfg)
    use_standins(npu_smi=False)
    with pytest.raises(ToolMissingError, match=r"npu-smi .* is not on PATH"):
        ais_bench.convert_settings(cfg)


def test_om_cache_key(use_standins) -> None:
    use_standins()

    def key(*overrides: str) -> str:
        settings = convert_stage.Settings.from_config(
            run_config("chip=ascend310p3", "model.weights=random", *overrides))
        return json.dumps(key_settings(settings), sort_keys=True)

    static = key("bs=4")
    assert key("bs=4") == static
    assert key("bs=8") != static  # a static OM is made per batch size
    assert key("bs=4", "chip.soc_version=Ascend310P1") != static
    assert key("bs=4", "+chip.atc_options.precision_mode=allow_fp32_to_fp16") != static
    assert key("bs=4", "+chip.atc_options.log=info") != static
    dynamic = ["chip.dynamic_batch_sizes=[1,4,8]", "bs=4"]
    assert key(*dynamic) != static
    assert key("chip.dynamic_batch_sizes=[1,4,8]", "bs=8") == key(*dynamic)  # converted once
    assert CANN_VERSION in static


def convert_and_open(standins: AscendStandins, onnx_path: Path, out_dir: Path,
                     cfg) -> tuple[list[str], object]:
    """The OM the stand-in atc makes of `onnx_path` for `cfg`: atc's argv, and an open session."""
    om_path, _ = ais_bench.convert(onnx_path, out_dir, ais_bench.convert_settings(cfg))
    (call,) = standins.calls("atc")
    return call["argv"], ais_bench.open_session(om_path, SessionSettings.from_config(cfg), 0)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_dynamic_batch_om(use_standins, resnet18_onnx: Path, tmp_path: Path,
                          generation: str) -> None:
    standins = use_standins(generation=generation)
    cfg = run_config(*FP32_CHIP, "model=resnet18", "bs=4", "chip.dynamic_batch_sizes=[1,4,8]",
                     "model.weights=random")
    argv, session = convert_and_open(standins, resnet18_onnx, tmp_path, cfg)
    assert "--input_shape=input:-1,3,224,224" in argv
    assert "--dynamic_batch_size=1,4,8" in argv
    batch = np.random.default_rng(1).standard_normal((3, 3, 224, 224), dtype=np.float32)
    assert np.abs(session.run(batch) - onnx_cpu(resnet18_onnx, batch)).max() <= 1e-5
    assert np.abs(session.run(batch[:1]) - onnx_cpu(resnet18_onnx, batch[:1])).max() <= 1e-5
    infers = standins.calls("ais_bench", "infer")
    assert [(c["mode"], c["shapes"][0][0]) for c in infers] == [("dymbatch", 4), ("dymbatch", 1)]
    assert session.describe()["dynamic_batch"].startswith("set_dynamic_batchsize(n)")
    with pytest.raises(ConfigError, match=r"bs=2 is not one of chip.dynamic_batch_sizes"):
        run_config("chip=ascend310p3", "bs=2", "chip.dynamic_batch_sizes=[1,4,8]")


def test_channels_last_om(use_standins, tmp_path: Path) -> None:
    """model.preprocess.layout=NHWC: atc is told ND (its ONNX formats are NCHW, NCDHW, ND) and
    the channels-last shape; the OM computes the NCHW model's logits on the transposed batch."""
    standins = use_standins()
    cfg = run_config(*FP32_CHIP, "model=resnet18", "bs=2", "model.weights=random",
                     "model.preprocess.layout=NHWC")
    nhwc_onnx = tmp_path / "nhwc.onnx"
    nchw_onnx = tmp_path / "nchw.onnx"
    with torch.no_grad():
        net = build.build(cfg.model.arch, cfg.model.arch_kwargs, None, seed=0)
        export_onnx(build.for_input_layout(net, "NHWC"), onnx_spec(cfg), nhwc_onnx)
        export_onnx(net, onnx_spec(run_config("model=resnet18")), nchw_onnx)
    om_dir = tmp_path / "om"
    om_dir.mkdir()
    argv, session = convert_and_open(standins, nhwc_onnx, om_dir, cfg)
    assert "--input_format=ND" in argv
    assert "--input_shape=input:2,224,224,3" in argv
    batch = np.random.default_rng(2).standard_normal((2, 3, 224, 224), dtype=np.float32)
    got = session.run(np.ascontiguousarray(batch.transpose(0, 2, 3, 1)))
    assert np.abs(got - onnx_cpu(nchw_onnx, batch)).max() <= 1e-4


def test_before_2024_infer_runs_dymbatch_as_static(use_standins, resnet18_onnx: Path,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Tools wheels before 2024-02-01 (interface.py at de5b60db): infer() prepares dymshape and
    dymdims only, so mode='dymbatch' leaves the input size at the largest gear and a batch of 4
    fails the backend's size check with the terse error; the runner's session sets the gear
    itself and gets the model's logits."""
    use_standins(generation="2023")
    cfg = run_config(*FP32_CHIP, "model=resnet18", "bs=4", "chip.dynamic_batch_sizes=[1,4,8]",
                     "model.weights=random")
    om_path, _ = ais_bench.convert(resnet18_onnx, tmp_path, ais_bench.convert_settings(cfg))
    interface = importlib.import_module("ais_bench.infer.interface")
    raw = interface.InferSession(0, str(om_path))
    batch = np.random.default_rng(5).standard_normal((4, 3, 224, 224), dtype=np.float32)
    capsys.readouterr()
    with pytest.raises(RuntimeError) as failure:
        raw.infer([batch], mode="dymbatch")
    assert str(failure.value) == "[-1][ACL: general failure] "
    gear = 3 * 224 * 224 * 4
    assert (f"[ERROR] Check i:0 name:input in size:{4 * gear} needsize:{8 * gear} "
            "not match") in capsys.readouterr().out
    assert not hasattr(raw, "summary") and hasattr(raw, "sumary")
    session = ais_bench.open_session(om_path, SessionSettings.from_config(cfg), 0)
    assert np.abs(session.run(batch) - onnx_cpu(resnet18_onnx, batch)).max() <= 1e-5
    assert session.describe()["api_generation"].startswith("before 2024-02")
    # the same call works from 2024-02 on, where infer() sets the gear from the batch
    use_standins(generation="2024-02")
    interface = importlib.import_module("ais_bench.infer.interface")
    later = interface.InferSession(0, str(om_path))
    (logits,) = later.infer([batch], mode="dymbatch")
    assert np.abs(logits - onnx_cpu(resnet18_onnx, batch)).max() <= 1e-5


@pytest.mark.parametrize("generation", GENERATIONS)
def test_every_release_pads_and_times(use_standins, resnet18_onnx: Path, tmp_path: Path,
                                      generation: str) -> None:
    standins = use_standins(generation=generation)
    cfg = run_config(*FP32_CHIP, "model=resnet18", "bs=4", "model.weights=random")
    om_path, _ = ais_bench.convert(resnet18_onnx, tmp_path, ais_bench.convert_settings(cfg))
    session = ais_bench.open_session(om_path, SessionSettings.from_config(cfg), 1)
    batch = np.random.default_rng(2).standard_normal((3, 3, 224, 224), dtype=np.float32)
    logits = session.run(batch)
    assert logits.shape == (3, 1000)  # the padding's output is dropped
    assert np.abs(logits - onnx_cpu(resnet18_onnx, batch)).max() <= 1e-5
    (infer,) = standins.calls("ais_bench", "infer")
    assert infer["shapes"] == [[4, 3, 224, 224]] and infer["mode"] == "static"
    assert infer["device_id"] == 1 and infer["generation"] == generation
    times = session.own_compute_ms()
    assert len(times) == 1 and times[0] > 0
    old = generation == "2023"
    assert session.describe()["api"] == ("InferSession.sumary()" if old
                                         else "InferSession.summary()")
    raw = session._session  # the release's own record: floats, or float32 pairs
    (entry,) = (raw.sumary() if old else raw.summary()).exec_time_list
    values = [entry] if old else list(entry)
    assert all(float(np.float32(v)) == v for v in values)
    assert (values[0] > 0) if old else (0 < values[0] < values[1])
    assert str(raw.get_inputs()[0].datatype) == "dtype.float32"  # an enum, not a string
    with pytest.raises(ConfigError, match=r"a batch of 5 does not fit the OM model's batch"):
        session.run(np.zeros((5, 3, 224, 224), dtype=np.float32))


def test_runtime_errors_are_reported_with_context(use_standins, resnet18_onnx: Path,
                                                  tmp_path: Path) -> None:
    use_standins(generation="2024-02")
    cfg = run_config(*FP32_CHIP, "model=resnet18", "bs=2", "model.weights=random")
    om_path, _ = ais_bench.convert(resnet18_onnx, tmp_path, ais_bench.convert_settings(cfg))
    with pytest.raises(DeviceRuntimeError,
                       match=r"^ais_bench could not open .*model.om on device 7: "
                             r"\[-1\]\[ACL: general failure\] \(ais_bench prints the cause"):
        ais_bench.open_session(om_path, SessionSettings.from_config(cfg), 7)


def _raw_session(om_path: Path, device: object = 0) -> object:
    interface = importlib.import_module("ais_bench.infer.interface")
    return interface.InferSession(device, str(om_path))


def test_2024_06_path_checks_and_the_runner(use_standins, resnet18_onnx: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """From 2024-06-13 InferSession refuses a model path with characters outside
    [_A-Za-z0-9/.-], a symlink, a group/other-writable file and a device id that is not an int;
    earlier releases open them all. The runner writes the OM without group/other write (even
    under umask 002), and names the path and the fix before ais_bench's terse refusal."""
    cfg = run_config(*FP32_CHIP, "model=resnet18", "bs=2", "model.weights=random")
    batch = np.random.default_rng(3).standard_normal((2, 3, 224, 224), dtype=np.float32)
    odd = tmp_path / "my cache+1"
    odd.mkdir()
    use_standins(generation="2024-06")
    old_umask = os.umask(0o002)
    try:
        om_path, _ = ais_bench.convert(resnet18_onnx, odd, ais_bench.convert_settings(cfg))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(om_path.stat().st_mode) & 0o022 == 0
    with pytest.raises(ValueError, match=r"^The path string is illegal. Please check.$"):
        _raw_session(om_path)
    assert "contains illegal char" in caplog.text
    with pytest.raises(ConfigError, match=r"^ais_bench \(2024-06 on.*\) refuses the OM model "
                       r".*/my cache\+1/model.om: it contains ' ', '\+'.* paths.cache_dir"):
        ais_bench.open_session(om_path, SessionSettings.from_config(cfg), 0)

    safe = tmp_path / "safe"
    safe.mkdir()
    safe_om = safe / "model.om"
    safe_om.write_bytes(om_path.read_bytes())
    link = safe / "link.om"
    link.symlink_to(safe_om)
    safe_om.chmod(0o664)
    with pytest.raises(ValueError, match=r"is illegal. Please check the error log"):
        _raw_session(safe_om)
    assert "is group writable, or is others writable" in caplog.text
    with pytest.raises(ConfigError, match=r"it is group- or other-writable \(mode 664\): "
                                          r"chmod go-w "):
        ais_bench.open_session(safe_om, SessionSettings.from_config(cfg), 0)
    safe_om.chmod(0o644)
    with pytest.raises(ValueError, match=r"is illegal"):
        _raw_session(link)
    with pytest.raises(ConfigError, match=r"it is a symbolic link"):
        ais_bench.open_session(link, SessionSettings.from_config(cfg), 0)
    with pytest.raises(TypeError, match=r"^device:1 is not a integer!$"):
        _raw_session(safe_om, np.int64(1))
    settings = SessionSettings.from_config(cfg)
    session = ais_bench.open_session(safe_om, settings, np.int64(1))  # type: ignore[arg-type]
    assert np.abs(session.run(batch) - onnx_cpu(resnet18_onnx, batch)).max() <= 1e-5

    for generation in ("2023", "2024-02", "msit"):  # no checks before 2024-06-13
        use_standins(generation=generation)
        _raw_session(link, np.int64(0))
        session = ais_bench.open_session(om_path, SessionSettings.from_config(cfg), 0)
        assert np.abs(session.run(batch) - onnx_cpu(resnet18_onnx, batch)).max() <= 1e-5


def test_npu_smi_is_read_per_device_id(use_standins) -> None:
    """Two-chip cards (Atlas 300I Duo): an NPU row names both of its chips' device ids, and
    the process table's `NPU  Chip` rows are not chips."""
    use_standins(chips="310P3,310P1", chips_per_npu=2)
    info = ascend.npu_smi_info()
    assert info is not None
    assert info.devices == {0: "310P3", 1: "310P3", 2: "310P1", 3: "310P1"}
    from runner import environment

    facts = environment.capture(run_config("chip=ascend310p3", "chip.devices=[2,3]").chip)
    assert facts["device_name"] == "Ascend310P1"
    use_standins(chips="910B3,910B3,910B3")
    assert ascend.npu_smi_info().devices == {0: "910B3", 1: "910B3", 2: "910B3"}


def test_exec_time_entries_of_both_releases() -> None:
    assert ais_bench.exec_ms(2.5) == 2.5
    assert ais_bench.exec_ms((100.0, 102.25)) == 2.25


def test_atc_failure_is_reported_with_its_code(use_standins, alexnet_onnx: Path,
                                               tmp_path: Path) -> None:
    use_standins()
    cfg = run_config("chip=ascend310p3", "model.weights=random", "model.input_name=image")
    with pytest.raises(ConversionError, match=r"atc failed \(exit 1\).*E10016.*atc.log"):
        ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))


def test_missing_cann_or_atc_says_which(use_standins, alexnet_onnx: Path,
                                        tmp_path: Path) -> None:
    cfg = run_config("chip=ascend310p3", "model.weights=random")
    use_standins(atc=False, cann=False)
    with pytest.raises(ToolMissingError, match=r"^CANN is not set up .*set_env.sh"):
        ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))
    use_standins(atc=False)
    with pytest.raises(ToolMissingError, match=r"^atc is not on PATH although CANN is set up"):
        ais_bench.convert(alexnet_onnx, tmp_path, ais_bench.convert_settings(cfg))


@pytest.mark.parametrize(("present", "message"), [
    ({"ais_bench": False}, r"^ais_bench not installed .*aclruntime and ais_bench wheels"),
    ({"aclruntime": False}, r"^aclruntime not installed"),
    ({"ais_bench": False, "aclruntime": False}, r"^aclruntime and ais_bench not installed"),
])
def test_missing_ais_bench_says_which(use_standins, present: dict[str, bool],
                                      message: str) -> None:
    use_standins(**present)
    with pytest.raises(ToolMissingError, match=message):
        ais_bench.infer_session_class()


@pytest.mark.slow
@pytest.mark.parametrize("generation", GENERATIONS)
def test_ascend_run_end_to_end(workspace: Workspace, standins: AscendStandins,
                               fast_benchmark: tuple[str, ...], generation: str) -> None:
    """atc -> OM -> ais_bench of each release, the default chip=ascend310p3 (force_fp16, whose
    stand-in OM computes in fp16) on two chips of a card: parity against PyTorch is not exact
    but within the fp16 tolerance, the TXT result files are ais_bench's, evaluate's top-k and
    each chip's ais_bench throughput land in MLflow with the NPU's environment."""
    standins.clear_calls()
    workspace.run("chip=ascend310p3", "chip.devices=[0,1]", "model=resnet18", "bs=4",
                  "dataset=synthetic", "dataset.synthetic.num_images=10", "model.weights=random",
                  "infer.result_format=txt", "cache.force=[convert,infer,benchmark]",
                  *fast_benchmark, env=standins.env(generation=generation, chips="310P3",
                                                    chips_per_npu=2))
    (run,) = workspace.runs()
    assert run.info.status == "FINISHED"
    (call,) = standins.calls("atc")  # a static OM for bs=4
    assert "--input_shape=input:4,3,224,224" in call["argv"]
    assert "--precision_mode=force_fp16" in call["argv"]
    # infer (one chunk, so one device): 10 images at bs=4 are 3 batches of 4, the last padded
    infers = standins.calls("ais_bench", "infer")
    assert [c["shapes"] for c in infers[:3]] == [[[4, 3, 224, 224]]] * 3
    assert {c["generation"] for c in infers} == {generation}
    metrics = run.data.metrics
    tolerance = run_config().parity.tolerance
    assert 0 < metrics["parity_max_abs_diff"] <= tolerance.fp16.max_abs_diff
    assert tolerance.fp16.min_top1_agreement <= metrics["parity_top1_agreement"] <= 1
    expected = reference.onnx_cpu_logits(workspace, run)
    logits = reference.run_logits(workspace, run)
    assert logits.shape == (10, 1000)
    assert 0 < np.abs(logits - expected).max() <= tolerance.fp16.max_abs_diff
    truth = reference.topk_percent(logits, reference.labels(workspace, run))
    assert [metrics[f"top{k}"] for k in range(1, 6)] == pytest.approx(truth)
    results = reference.entry(workspace, "infer", run) / "results"
    files = sorted(results.glob("*_0.txt"))
    assert len(files) == 10
    text = files[0].read_text()
    assert text.count("\n") == 1 and text.endswith(" \n")  # ais_bench's TXT row
    env = workspace.record(run)["environment"]
    assert env["device_name"] == "Ascend310P3"
    assert env["driver_version"] == "npu-smi 23.0.6"
    assert env["runtime_version"].startswith(f"CANN {CANN_VERSION}, ais_bench 0.0.2-standin")
    # benchmark: one worker process per chip, each with its own session (after infer's session,
    # before the e2e stage's)
    sessions = standins.calls("ais_bench", "InferSession")[1:3]
    assert sorted(s["device_id"] for s in sessions) == [0, 1]
    assert len({s["pid"] for s in sessions}) == 2
    artifacts = Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, tracking_uri=workspace.tracking_uri))
    report = json.loads((artifacts / "stages" / "benchmark" / "benchmark.json").read_text())
    for device in report["devices"]:
        assert device["session"]["api"] == ("InferSession.sumary()" if generation == "2023"
                                            else "InferSession.summary()")
        own = device["runtime_compute_ms"]
        assert len(own) == sum(len(repeat) for repeat in device["compute_ms"])
        assert metrics[f"ais_bench_throughput_fps_dev{device['device']}"] == pytest.approx(
            1000 * 4 / np.mean(own))
    assert metrics["ais_bench_throughput_fps"] == pytest.approx(
        metrics["ais_bench_throughput_fps_dev0"] + metrics["ais_bench_throughput_fps_dev1"])
    convert_info = json.loads((artifacts / "stages" / "convert" / "info.json").read_text())
    assert convert_info["atc_command"] == ["atc", *call["argv"]]


@pytest.mark.slow
@pytest.mark.parametrize("generation", GENERATIONS)
def test_a_dynamic_batch_sweep_converts_once(workspace: Workspace, standins: AscendStandins,
                                             fast_benchmark: tuple[str, ...],
                                             generation: str) -> None:
    standins.clear_calls()
    workspace.run("-m", "bs=2,4", "chip=ascend310p3", "chip.dynamic_batch_sizes=[2,4]",
                  "stage=performance", "model=resnet18", "model.weights=random",
                  "cache.force=[benchmark]", *fast_benchmark,
                  env=standins.env(generation=generation))
    # the sweep's parent run holds no stages: its two jobs are the nested runs
    first, second = [r for r in workspace.runs() if "mlflow.parentRunId" in r.data.tags]
    assert (first.info.status, second.info.status) == ("FINISHED", "FINISHED")
    # one OM for the sweep (made by the first generation's sweep: the OM does not depend on it)
    assert workspace.cache_states(second)["convert"] == "hit"
    convert = json.loads((workspace.entry("convert", first) / "result.json").read_text())
    assert "--dynamic_batch_size=2,4" in convert["info"]["atc_command"]
    infers = standins.calls("ais_bench", "infer")
    assert {c["shapes"][0][0] for c in infers} == {2, 4}
    assert {(c["mode"], c["generation"]) for c in infers} == {("dymbatch", generation)}


@pytest.mark.slow
def test_a_cache_path_ais_bench_refuses_fails_the_run_with_one_line(
        workspace: Workspace, standins: AscendStandins, tmp_path: Path,
        fast_benchmark: tuple[str, ...]) -> None:
    """paths.cache_dir with a space and a '+': ais_bench from 2024-06-13 would refuse the OM
    with "The path string is illegal"; the run fails naming the path and the fix, while the same
    cache works with an earlier ais_bench."""
    workspace.cache = tmp_path / "my cache+1"
    common = ("chip=ascend310p3", "stage=performance", "model=resnet18", "model.weights=random",
              *fast_benchmark)
    workspace.run(*common, env=standins.env(generation="2023"))
    result = workspace.run(*common, "cache.force=[benchmark]",
                           env=standins.env(generation="2024-06"), check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("runner: error:")]
    assert "refuses the OM model" in line and "my cache+1" in line
    assert "contains ' ', '+'" in line and "paths.cache_dir" in line
    first, second = workspace.runs()
    assert (first.info.status, second.info.status) == ("FINISHED", "FAILED")


@pytest.mark.slow
def test_missing_cann_fails_the_run_with_one_line(workspace: Workspace,
                                                  standins: AscendStandins) -> None:
    result = workspace.run("chip=ascend310p3", "stage=performance", "model.weights=random",
                           env=standins.env(atc=False, cann=False), check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("runner: error:")]
    assert "CANN is not set up" in line and "set_env.sh" in line
    (run,) = workspace.runs()
    assert run.info.status == "FAILED"
    assert "CANN is not set up" in run.data.tags["error"]
