"""The PyTorch runtime (chip=torch_cpu here, chip=cuda where a GPU exists): the module rebuilt by
convert computes what the exported ONNX computes, in fp32, channels_last and fp16; settings a
runtime cannot honour are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from runner.backends import ConversionError, SessionSettings
from runner.backends import onnxruntime as ort_backend
from runner.backends import torch as torch_backend
from runner.config import RunConfig
from runner.errors import ConfigError, ToolMissingError
from runner.models import build
from runner.stages.export import export_onnx, onnx_spec
from tests import reference
from tests.conftest import Workspace, run_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(ONNX file, torch model file) of AlexNet with seeded random weights."""
    cfg = run_config("chip=torch_cpu", "model.weights=random")
    out = tmp_path_factory.mktemp("torch")
    with torch.no_grad():
        net = build.build(cfg.model.arch, cfg.model.arch_kwargs, None, seed=0)
        export_onnx(net, onnx_spec(cfg), out / "model.onnx")
    model_path, facts = torch_backend.convert(out / "model.onnx", out,
                                              torch_backend.convert_settings(cfg))
    assert facts["probe_max_abs_difference_vs_onnx"] <= 1e-4
    return out / "model.onnx", model_path


@pytest.fixture(scope="module")
def batch_and_reference(converted: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    batch = np.random.default_rng(5).standard_normal((4, 3, 224, 224), dtype=np.float32)
    session = ort.InferenceSession(str(converted[0]), providers=["CPUExecutionProvider"])
    return batch, session.run(None, {"actual_input_1": batch})[0]


def _ort_check(cfg: RunConfig) -> None:
    ort_backend.check(SessionSettings.from_config(cfg), tuple(cfg.chip.devices))


@pytest.mark.parametrize("overrides", [(), ("chip.channels_last=true",), ("chip.threads=1",)])
def test_fp32_matches_the_onnx_model(converted, batch_and_reference, overrides) -> None:
    cfg = run_config("chip=torch_cpu", *overrides)
    chip = cfg.chip
    session = torch_backend.open_session(converted[1], SessionSettings.from_config(cfg), 0)
    batch, expected = batch_and_reference
    got = session.run(batch)
    assert got.dtype == np.float32 and got.shape == (4, 1000)
    assert np.abs(got - expected).max() <= 1e-4
    assert session.own_compute_ms() == []
    facts = session.describe()
    assert facts["device"] == "cpu" and facts["channels_last"] == chip.channels_last
    if chip.threads:
        assert facts["intra_op_threads"] == chip.threads


def test_fp16_is_close_to_fp32_and_says_so(converted, batch_and_reference) -> None:
    cfg = run_config("chip=torch_cpu", "chip.precision=fp16", "chip.channels_last=true")
    session = torch_backend.open_session(converted[1], SessionSettings.from_config(cfg), 0)
    batch, expected = batch_and_reference
    got = session.run(batch)
    scale = np.abs(expected).max()
    difference = np.abs(got - expected).max()
    assert 0 < difference <= 1e-2 * scale  # really computed in half precision, and close
    assert session.describe()["precision"] == "fp16"


def test_convert_refuses_weights_other_than_the_onnx_files(converted, tmp_path: Path) -> None:
    cfg = run_config("chip=torch_cpu", "model.weights=random", "seed=1")  # the ONNX is seed 0
    with pytest.raises(ConversionError, match=r"does not compute what .*model.onnx computes"):
        torch_backend.convert(converted[0], tmp_path, torch_backend.convert_settings(cfg))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_refused_before_converting() -> None:
    cfg = run_config("chip=cuda", "model.weights=random")
    with pytest.raises(ToolMissingError, match=r"sees no CUDA device: .*chip=torch_cpu"):
        torch_backend.check(SessionSettings.from_config(cfg), (0,))


def test_onnxruntime_refuses_what_it_would_ignore() -> None:
    with pytest.raises(ConfigError, match=r"chip.precision=fp16 is not supported by runtime "
                                          r"onnxruntime"):
        _ort_check(run_config("chip=cpu", "chip.precision=fp16"))
    with pytest.raises(ConfigError, match=r"chip.channels_last=true is not supported"):
        _ort_check(run_config("chip=cpu", "chip.channels_last=true"))
    with pytest.raises(ConfigError, match=r"chip.device_type=cuda does not match"):
        _ort_check(run_config("chip=cuda_ort", "chip.providers=[CPUExecutionProvider]"))


@needs_cuda
@pytest.mark.parametrize("overrides", [(), ("chip.precision=fp16", "chip.channels_last=true")])
def test_cuda_matches_the_onnx_model(converted, batch_and_reference, overrides) -> None:
    cfg = run_config("chip=cuda", *overrides)
    chip = cfg.chip
    session = torch_backend.open_session(converted[1], SessionSettings.from_config(cfg), 0)
    batch, expected = batch_and_reference
    tolerance = 1e-2 * np.abs(expected).max() if chip.precision == "fp16" else 1e-3
    assert np.abs(session.run(batch) - expected).max() <= tolerance
    assert session.describe()["device"] == "cuda:0"


@pytest.mark.slow
@pytest.mark.parametrize("chip", ["torch_cpu", pytest.param("cuda", marks=needs_cuda)])
def test_torch_run_end_to_end(workspace: Workspace, fast_benchmark: tuple[str, ...],
                              chip: str) -> None:
    workspace.run(f"chip={chip}", "model=alexnet", "bs=4", "dataset=synthetic",
                  "dataset.synthetic.num_images=10", "model.weights=random", *fast_benchmark)
    (run,) = workspace.runs()
    assert run.info.status == "FINISHED"
    expected = reference.onnx_cpu_logits(workspace, run)
    assert np.abs(reference.run_logits(workspace, run) - expected).max() <= 1e-3
    truth = reference.topk_percent(expected, reference.labels(workspace, run))
    assert [run.data.metrics[f"top{k}"] for k in range(1, 6)] == pytest.approx(truth)
    assert run.data.metrics["throughput_fps"] > 0
    env = workspace.record(run)["environment"]
    assert env["runtime"] == "torch" and int(env["torch_threads"]) >= 1
    assert env["device_type"] == ("cuda" if chip == "cuda" else "cpu")
