"""The chip group: every entry composes into a valid run, and chip settings that cannot work
together are refused naming the key."""

from __future__ import annotations

import pytest

from runner.errors import ConfigError
from tests.conftest import run_config

CHIPS = {  # entry: (runtime, device_type, soc_version)
    "cpu": ("onnxruntime", "cpu", None),
    "cuda_ort": ("onnxruntime", "cuda", None),
    "tensorrt_ort": ("onnxruntime", "cuda", None),
    "torch_cpu": ("torch", "cpu", None),
    "cuda": ("torch", "cuda", None),
    "ascend310": ("ais_bench", "npu", "Ascend310"),
    "ascend310p3": ("ais_bench", "npu", "Ascend310P3"),
    "ascend910b": ("ais_bench", "npu", "auto"),
}


@pytest.mark.parametrize("name", CHIPS)
def test_every_chip_entry_composes(name: str) -> None:
    chip = run_config(f"chip={name}").chip
    assert (chip.runtime, chip.device_type, chip.soc_version) == CHIPS[name]
    assert chip.name == name and chip.devices == [0]


@pytest.mark.parametrize(("overrides", "message"), [
    (("chip=cpu", "chip.device_type=npu"), r"^chip.device_type='npu' is not one of cpu, cuda"),
    (("chip=ascend310", "chip.device_type=cpu"), r"^chip.device_type='cpu' is not one of npu"),
    (("chip=ascend310", "chip.soc_version=null"), r"^chip.soc_version is not set for chip=ascend"),
    (("chip=ascend310", "chip.soc_version=310P3"), r"^chip.soc_version='310P3' is not an atc"),
    (("chip=cpu", "chip.dynamic_batch_sizes=[1,4]"), r"^chip.dynamic_batch_sizes is for Ascend"),
    (("chip=ascend310", "chip.dynamic_batch_sizes=[4]"), r"must be 2 to 100 distinct sizes"),
    (("chip=ascend310", "chip.dynamic_batch_sizes=[4,4,8]"), r"must be 2 to 100 distinct"),
    (("chip=cpu", "chip.devices=[0,0]"), r"^chip.devices=\[0, 0\] must be distinct ids"),
    (("chip=cpu", "chip.devices=[]"), r"^chip.devices is empty"),
    (("chip=ascend310p3", "chip.precision=bf16"), r"^chip.precision=bf16 is not supported by "
                                                  r"runtime ais_bench .*use chip.precision=fp16"),
    (("chip=cpu", "chip.compile=true"), r"^chip.compile=true is torch.compile, for runtime torch"),
    (("chip=torch_cpu", "chip.cuda_graphs=true"),
     r"^chip.cuda_graphs=true .* needs runtime torch on device_type cuda \(chip=cuda\), not "
     r"torch on cpu"),
    (("chip=cuda_ort", "chip.cuda_graphs=true"), r"^chip.cuda_graphs=true .*not onnxruntime on"),
    (("chip=cuda", "chip.precision=fp8"),
     r"^chip.precision='fp8' is not one of fp32, fp16, bf16, int8"),
    # int8 is ONNX Runtime's static quantization on the CPU only; Ascend's is AMCT's job
    (("chip=ascend310p3", "chip.precision=int8"),
     r"^chip.precision=int8 is ONNX Runtime's static quantization on the CPU \(chip=cpu\), not "
     r"runtime ais_bench on npu \(chip=ascend310p3\): quantize for Ascend with AMCT"),
    (("chip=torch_cpu", "chip.precision=int8"),
     r"^chip.precision=int8 .*not runtime torch on cpu \(chip=torch_cpu\): use chip=cpu"),
    (("chip=cuda", "chip.precision=int8"), r"^chip.precision=int8 .*not runtime torch on cuda"),
    (("chip=cuda_ort", "chip.precision=int8"),
     r"^chip.precision=int8 .*not runtime onnxruntime on cuda \(chip=cuda_ort\)"),
    (("chip=tensorrt_ort", "chip.precision=int8"), r"^chip.precision=int8 .*chip=tensorrt_ort"),
    (("chip=cpu", "chip.precision=int8", "chip.calibration.num_images=0"),
     r"^chip.calibration.num_images=0 must be > 0"),
    (("chip=cpu", "chip.precision=int8", "chip.calibration.method=KL"),
     r"^chip.calibration.method='KL' is not one of MinMax, Entropy, Percentile"),
])
def test_impossible_chip_settings_name_the_key(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_config(*overrides)
