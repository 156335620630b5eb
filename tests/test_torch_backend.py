"""The PyTorch runtime (chip=torch_cpu here, chip=cuda where a GPU exists): the module rebuilt by
convert computes what the exported ONNX computes, in fp32, channels_last, fp16 and bf16, compiled
or not, replayed from CUDA graphs or not; settings a runtime cannot honour are refused.

GPU tests are marked `needs_cuda` and skip on a machine without CUDA (CI); on the GPU machine:
`bash scripts/gpu_setup.sh test tests/test_torch_backend.py`."""

from __future__ import annotations

import time
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
# |logits - fp32 ONNX logits| / max |ONNX logits| on the random batch: fp16 keeps 11 significant
# bits, bf16 8 (measured here on torch_cpu: fp16 ~1e-3, bf16 ~6e-3 of the scale)
RELATIVE_TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 5e-2}


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


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precisions_are_close_to_fp32_and_say_so(converted, batch_and_reference,
                                                     precision: str) -> None:
    cfg = run_config("chip=torch_cpu", f"chip.precision={precision}", "chip.channels_last=true")
    session = torch_backend.open_session(converted[1], SessionSettings.from_config(cfg), 0)
    batch, expected = batch_and_reference
    got = session.run(batch)
    assert got.dtype == np.float32 and got.shape == (4, 1000)
    relative = np.abs(got - expected).max() / np.abs(expected).max()
    # really computed in that precision (fp16's error is far below bf16's), and close
    assert {"fp16": 2e-4, "bf16": 2e-3}[precision] < relative <= RELATIVE_TOLERANCE[precision]
    facts = session.describe()
    assert facts["precision"] == precision and facts["channels_last"] is True
    assert facts["compile"] is False and "compile_s" not in facts and facts["tf32"] is None


@pytest.mark.slow
def test_compile_on_the_cpu_pads_short_batches_to_its_static_shape(
        converted, batch_and_reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile with Inductor's C++ kernels: about 1-2 minutes on a 2-core machine with a
    cold cache, hence slow. The short batch runs padded to the first batch's shape: no second
    compilation."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cfg = run_config("chip=torch_cpu", "chip.compile=true", f"paths.cache_dir={tmp_path}")
    settings = SessionSettings.from_config(cfg)
    assert settings.compile_cache_dir == str(tmp_path / "torchinductor")
    session = torch_backend.open_session(converted[1], settings, 0)
    batch, expected = batch_and_reference
    assert np.abs(session.run(batch) - expected).max() <= 1e-4
    compile_s = session.describe()["compile_s"]
    assert compile_s > 0
    short = session.run(batch[:3])
    assert short.shape == (3, 1000) and np.abs(short - expected[:3]).max() <= 1e-4
    facts = session.describe()
    assert facts["compile_s"] == compile_s  # nothing compiled again
    assert facts["static_shapes"] == [[4, 3, 224, 224]] and facts["padded_calls"] == 1
    assert facts["compile_cache_dir"] == str(tmp_path / "torchinductor")
    assert any((tmp_path / "torchinductor").iterdir())  # the cache a later run reuses


def test_compile_without_a_cpp_compiler_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no g++, c++ or clang++
    monkeypatch.delenv("CXX", raising=False)
    cfg = run_config("chip=torch_cpu", "chip.compile=true")
    with pytest.raises(ToolMissingError, match=r"^chip.compile=true on the CPU: .* finds no C\+\+ "
                                               r"compiler .*remove chip.compile$"):
        torch_backend.check(SessionSettings.from_config(cfg), (0,))
    torch_backend.check(SessionSettings.from_config(run_config("chip=torch_cpu")), (0,))


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
    with pytest.raises(ConfigError, match=r"^chip.precision=bf16 is not supported by runtime "
                                          r"onnxruntime .*for fp16 and bf16$"):
        _ort_check(run_config("chip=cpu", "chip.precision=bf16"))


@pytest.mark.parametrize(("chip", "provider"), [("cuda_ort", "CUDAExecutionProvider"),
                                                ("tensorrt_ort", "TensorrtExecutionProvider")])
def test_an_onnxruntime_without_the_gpu_provider_is_refused_before_any_work(
        chip: str, provider: str) -> None:
    if provider in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has {provider}")
    with pytest.raises(ToolMissingError, match=rf"^ONNX Runtime [0-9.]+ has no {provider}\b.*"
                                               r"install onnxruntime-gpu in place of onnxruntime"):
        _ort_check(run_config(f"chip={chip}"))


@needs_cuda
@pytest.mark.parametrize("overrides", [(), ("chip.channels_last=true",),
                                       ("chip.precision=fp16", "chip.channels_last=true"),
                                       ("chip.precision=bf16", "chip.channels_last=true")])
def test_cuda_matches_the_onnx_model(converted, batch_and_reference, overrides) -> None:
    cfg = run_config("chip=cuda", *overrides)
    session = torch_backend.open_session(converted[1], SessionSettings.from_config(cfg), 0)
    batch, expected = batch_and_reference
    got = session.run(batch)
    relative = np.abs(got - expected).max() / np.abs(expected).max()
    assert relative <= RELATIVE_TOLERANCE[cfg.chip.precision]
    facts = session.describe()
    assert facts["device"] == "cuda:0" and facts["tf32"] is False  # fp32 means fp32
    assert facts["pinned_host_memory"] is True
    # the device time: one CUDA-event figure per call, the copies outside it
    assert len(session.own_compute_ms()) == 1 and session.own_compute_ms()[0] > 0


@needs_cuda
@pytest.mark.parametrize("overrides", [("chip.cuda_graphs=true",), ("chip.compile=true",),
                                       ("chip.cuda_graphs=true", "chip.compile=true",
                                        "chip.precision=fp16", "chip.channels_last=true")])
def test_cuda_graphs_and_compile_pad_short_batches(converted, batch_and_reference, tmp_path: Path,
                                                   overrides) -> None:
    cfg = run_config("chip=cuda", f"paths.cache_dir={tmp_path}", *overrides)
    chip = cfg.chip
    session = torch_backend.open_session(converted[1], SessionSettings.from_config(cfg), 0)
    batch, expected = batch_and_reference
    tolerance = RELATIVE_TOLERANCE[chip.precision] if chip.precision != "fp32" else 1e-4
    scale = np.abs(expected).max()
    for _ in range(3):  # replayed / compiled once, called again
        assert np.abs(session.run(batch) - expected).max() <= tolerance * scale
    short = session.run(batch[:3])
    assert short.shape == (3, 1000)
    assert np.abs(short - expected[:3]).max() <= tolerance * scale
    facts = session.describe()
    assert facts["static_shapes"] == [[4, 3, 224, 224]] and facts["padded_calls"] == 1
    assert (facts.get("compile_s", 0) > 0) == chip.compile
    assert (facts.get("graph_capture_s", 0) > 0) == chip.cuda_graphs
    assert len(session.own_compute_ms()) == 4


@needs_cuda
def test_the_device_time_lies_inside_the_host_time(converted) -> None:
    """The events bracket the forward only; the host timer spans copies and the synchronize."""
    cfg = run_config("chip=cuda", "chip.cuda_graphs=true")
    session = torch_backend.open_session(converted[1], SessionSettings.from_config(cfg), 0)
    batch = np.random.default_rng(0).standard_normal((64, 3, 224, 224), dtype=np.float32)
    host_ms = []
    for _ in range(10):
        started = time.perf_counter_ns()
        session.run(batch)
        host_ms.append((time.perf_counter_ns() - started) / 1e6)
    device_ms = session.own_compute_ms()
    assert len(device_ms) == 10
    assert all(0 < d < h for d, h in zip(device_ms[1:], host_ms[1:], strict=True))


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
    # CUDA: the CUDA-event device time of the same timed calls, as ais_bench's figure
    assert ("torch_throughput_fps" in run.data.metrics) == (chip == "cuda")


@pytest.mark.slow
@needs_cuda
def test_fast_cuda_run_passes_fp16_parity(workspace: Workspace,
                                          fast_benchmark: tuple[str, ...]) -> None:
    """Every stage with the fast options; 10 images at bs=4: the last batch runs padded."""
    workspace.run("chip=cuda", "chip.precision=fp16", "chip.channels_last=true",
                  "chip.cuda_graphs=true", "chip.compile=true", "model=alexnet", "bs=4",
                  "dataset=synthetic", "dataset.synthetic.num_images=10", "model.weights=random",
                  *fast_benchmark)
    (run,) = workspace.runs()
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["parity_top1_agreement"] >= 0.99  # parity.tolerance.fp16 judged the run
    assert metrics["compile_s"] > 0 and metrics["graph_capture_s"] > 0
    assert metrics["torch_throughput_fps"] >= metrics["throughput_fps"]
