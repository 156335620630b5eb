"""Stand-in for aclruntime, the pybind backend of ais_bench, where no NPU exists.

It loads the stand-in atc's "OM" file (a JSON header line, then the ONNX bytes) and runs it with
ONNX Runtime on the CPU, one thread: outputs are a deterministic function of the input. Like the
real backend it accepts only inputs of the model's size (static OM) or of the dynamic batch size
set before the run, and keeps each run's execute time: floats (ms) with
AIS_BENCH_STANDIN_API=2023, (start_ms, end_ms) pairs with 2024 (the default), as the two
releases do.
"""

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime

API = os.environ.get("AIS_BENCH_STANDIN_API", "2024")
DEVICE_COUNT = 4  # an Atlas 300I card: four chips, device ids 0-3


@dataclass
class TensorDesc:
    name: str
    shape: list
    datatype: str = "FLOAT32"
    format: str = "NCHW"

    @property
    def size(self) -> int:
        return int(np.prod([abs(d) for d in self.shape])) * 4

    @property
    def realsize(self) -> int:
        return self.size


@dataclass
class session_options:  # the real class's name
    loop: int = 1
    log_level: int = 2
    acl_json_path: str | None = None


@dataclass
class Summary:
    exec_time_list: list = field(default_factory=list)


class InferenceSession:
    def __init__(self, model_path: str, device_id: int, options: session_options) -> None:
        if not 0 <= device_id < DEVICE_COUNT:
            raise RuntimeError(f"[ERROR] acl open device {device_id} failed (stand-in has "
                               f"{DEVICE_COUNT} devices)")
        with open(model_path, "rb") as stream:
            header = json.loads(stream.readline())
            onnx_bytes = stream.read()
        if header.get("standin") != "om":
            raise RuntimeError(f"[ERROR] load model from file {model_path} failed")
        self._header = header
        ort_options = onnxruntime.SessionOptions()
        ort_options.intra_op_num_threads = 1
        ort_options.log_severity_level = 3
        self._ort = onnxruntime.InferenceSession(onnx_bytes, ort_options,
                                                 providers=["CPUExecutionProvider"])
        self._dynamic_batch = None
        self._times: list = []

    def get_inputs(self) -> list:
        return [TensorDesc(self._header["input_name"], list(self._header["input_shape"]))]

    def get_outputs(self) -> list:
        return [TensorDesc(self._header["output_name"], [self._header["input_shape"][0], -1])]

    def set_staticbatch(self) -> None:
        self._dynamic_batch = None

    def set_dynamic_batchsize(self, batch: int) -> None:
        sizes = self._header["dynamic_batch_size"]
        if not sizes or int(batch) not in sizes:
            raise RuntimeError(f"[ERROR] dynamic batch {batch} is not one of the model's {sizes}")
        self._dynamic_batch = int(batch)

    def run(self, output_names: list, inputs: list) -> list:
        (array,) = inputs
        expected = list(self._header["input_shape"])
        if expected[0] == -1:
            if self._dynamic_batch is None:
                raise RuntimeError("[ERROR] dynamic batch model run without a batch size set")
            expected[0] = self._dynamic_batch
        if list(array.shape) != expected or array.dtype != np.float32:
            raise RuntimeError(f"[ERROR] input size {array.nbytes} not matched model input size "
                               f"{int(np.prod(expected)) * 4} (shape {expected})")
        start = time.perf_counter() * 1000.0
        outputs = self._ort.run(None, {self._header["input_name"]: array})
        end = time.perf_counter() * 1000.0
        self._times.append(end - start if API == "2023" else (start, end))
        return outputs

    def sumary(self) -> Summary:  # the real spelling
        return Summary(list(self._times))

    def reset_sumaryinfo(self) -> None:
        self._times.clear()
