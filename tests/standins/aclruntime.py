"""Stand-in for aclruntime, the pybind backend of ais_bench, where no NPU exists.

It loads the stand-in atc's "OM" file (a JSON header line, then ONNX bytes whose numerics follow
the atc precision mode, see atc.py) and runs it with ONNX Runtime on the CPU, one thread.

$AIS_BENCH_STANDIN_GENERATION picks the release it behaves like (GENERATIONS below). The
sources read, all under `ais-bench_workload/tool/ais_bench/backend/` of the Ascend tools
repository as carried by the GitHub fork Yanguan619/aclruntime (commit 9d6da90 named in issue 13
is not in that history; the backend there is unchanged from 2023-06-21, 1f3fe58f, to de5b60db,
2023-11-12, the last commit before 2024-02-01, so de5b60db is what "2023" follows), and under
`ait/components/benchmark/backend/` of the msit mirror xiaobingling93-pixel/Ascend-msit:

- Input size check (every release; `base/module/ModelInfer/ModelInferenceProcessor.cpp`,
  `CheckInVectorAndFillBaseTensor`, de5b60db and b811625b): an input must be exactly
  `realsize` bytes, else `[ERROR] Check i:.. name:.. in size:.. needsize:.. not match` on stdout
  and the call fails. `realsize` starts as the model's input size, which for a dynamic-batch
  OM is the largest gear, and only `SetDynamicBatchsize` changes it (size * batch / max batch);
  `SetStaticBatch` does not put it back.
- Errors (`python/src/PyInferenceSession/PyInferenceSession.cpp`: `throw
  std::runtime_error(GetError(ret))`; `base/module/ErrorCode/ErrorCode.cpp`, `GetError`): the
  Python exception says only `[<code>][<text>] `, e.g. `[-1][ACL: general failure] `; the
  details are the `[ERROR] ...` lines the backend printed to stdout (`ERROR_LOG`,
  `base/include/Base/Log/Log.h`).
- `set_dynamic_batchsize(n)` (`SetDynamicBatchsize`, and `model_process.cpp`
  `CheckDynamicBatchSize`): fails unless n is one of the OM's gears; it exists in every release.
- Execute times (`ModelInferenceProcessor::Execute`): "2023" keeps each execute's duration as a
  C++ float (`std::vector<float> execTimeList`, de5b60db); from ait benchmark 8c67f6f51
  (2023-10-09, msit mirror) and in the tools repository from 3ffe8a42/b811625b (2024-02-01) it
  keeps `(start, end)` as float pairs, milliseconds since the session was opened
  (`InitSumaryInfo` in `Init`), so the resolution coarsens as the session ages (float32).
  The accessor is `sumary()` / `reset_sumaryinfo()` in every release of this backend.
- `get_inputs()[i].datatype` is a pybind enum (`python/src/PyTensor/PyTensor.cpp`,
  `py::enum_<Base::TensorDataType>(m, "dtype")`): `aclruntime.dtype.float32`; `format` an int.
- A dynamic-batch OM executed with no batch size set (`SetInputsData` / `SetDynamicInfo` leave
  the gear input uninitialised): the sources say nothing of what ACL then does; the stand-in
  fails the execute, which is what a client must not depend on either way.
"""

import enum
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime

GENERATIONS = ("2023", "2024-02", "2024-06", "msit")
GENERATION = os.environ.get("AIS_BENCH_STANDIN_GENERATION", "2024-06")
if GENERATION not in GENERATIONS:
    raise ImportError(f"AIS_BENCH_STANDIN_GENERATION={GENERATION} is not one of {GENERATIONS}")
PAIRS = GENERATION != "2023"  # exec_time_list holds (start, end) pairs
DEVICE_COUNT = 4  # e.g. two Atlas 300I Duo cards: device ids 0-3
ACL_FAILURE = "[-1][ACL: general failure] "  # GetError(APP_ERR_ACL_FAILURE)


class dtype(enum.Enum):  # the real enum's name
    int8 = 2
    uint8 = 4
    int16 = 6
    uint16 = 7
    int32 = 3
    uint32 = 8
    int64 = 9
    uint64 = 10
    float16 = 1
    float32 = 0
    double = 11
    bool = 12


def _log(message: str) -> None:
    """The backend's ERROR_LOG: stdout, `[ERROR] ` prefix."""
    sys.stdout.write(f"[ERROR] {message}\n")
    sys.stdout.flush()


def _fail(*details: str) -> RuntimeError:
    for detail in details:
        _log(detail)
    return RuntimeError(ACL_FAILURE)


@dataclass
class TensorDesc:
    name: str
    shape: list
    size: int
    realsize: int
    datatype: dtype = dtype.float32
    format: int = 0  # aclFormat ACL_FORMAT_NCHW


@dataclass
class session_options:  # the real class's name
    loop: int = 1
    log_level: int = 2
    acl_json_path: str = ""


@dataclass
class sumary:  # the real class's name (InferSumaryInfo)
    exec_time_list: list = field(default_factory=list)


def _float32(value: float) -> float:
    return float(np.float32(value))


class InferenceSession:
    def __init__(self, model_path: str, device_id: int, options: session_options) -> None:
        if not 0 <= int(device_id) < DEVICE_COUNT:
            raise _fail(f"aclrtSetDevice failed. device id {device_id} (the stand-in has "
                        f"{DEVICE_COUNT} devices)")
        try:
            with open(model_path, "rb") as stream:
                header = json.loads(stream.readline())
                onnx_bytes = stream.read()
        except (OSError, ValueError):
            header, onnx_bytes = {}, b""
        if header.get("standin") != "om":
            raise _fail(f"aclmdlLoadFromFile failed, model path {model_path}",
                        "LoadModelFromFile failed")
        self._options = options
        self._header = header
        ort_options = onnxruntime.SessionOptions()
        ort_options.intra_op_num_threads = 1
        ort_options.log_severity_level = 3
        self._ort = onnxruntime.InferenceSession(onnx_bytes, ort_options,
                                                 providers=["CPUExecutionProvider"])
        shape = list(header["input_shape"])
        self._gears = header.get("dynamic_batch_size") or []
        batch = max(self._gears) if shape[0] == -1 else shape[0]
        # an AIPP model (atc --insert_op_conf) takes uint8 RGB888_U8 images: a byte per value
        self._dtype = np.dtype(header.get("input_dtype", "float32"))
        size = int(np.prod([batch, *shape[1:]])) * self._dtype.itemsize
        self._input = TensorDesc(header["input_name"], shape, size, size,
                                 getattr(dtype, self._dtype.name))
        self._dynamic_batch: int | None = None  # dynamicInfo_.dynamicType == DYNAMIC_BATCH
        self._zero_point = time.time()  # InitSumaryInfo (2023-10 on)
        self._times: list = []

    def get_inputs(self) -> list:
        return [self._input]

    def get_outputs(self) -> list:
        batch = self._header["input_shape"][0]
        return [TensorDesc(self._header["output_name"], [batch, -1], 0, 0)]

    def options(self) -> session_options:
        return self._options

    def set_staticbatch(self) -> None:
        self._dynamic_batch = None

    def set_dynamic_batchsize(self, batch: int) -> None:
        if not self._gears:
            raise _fail("the dynamic_batch_size parameter is not specified for model conversion")
        if int(batch) not in self._gears:
            raise _fail("the dymBatch parameter is not correct")
        if -1 in self._input.shape:
            self._input.realsize = self._input.size * int(batch) // max(self._gears)
        self._dynamic_batch = int(batch)

    def set_dynamic_dims(self, dims: str) -> None:
        raise _fail("the dynamic_dims parameter is not specified for model conversion")

    def set_dynamic_shape(self, shapes: str) -> None:
        raise _fail("check dynamic shape failed")

    def set_custom_outsize(self, sizes: list) -> None:
        pass

    def run(self, output_names: list, inputs: list) -> list:
        """The backend's `run(names, [BaseTensor])`: numpy arrays here, read as raw bytes."""
        if len(inputs) != 1:
            raise _fail(f"intensors in:{len(inputs)} need:1 not match")
        (array,) = inputs
        if array.nbytes != self._input.realsize:
            raise _fail(f"Check i:0 name:{self._input.name} in size:{array.nbytes} "
                        f"needsize:{self._input.realsize} not match",
                        "Check InVector failed ret:-1")
        if self._gears and self._dynamic_batch is None:
            raise _fail("acl execute failed:1 (stand-in: a dynamic-batch OM executed with no "
                        "batch size set)", "Execute Infer failed ret:-1")
        batch = self._dynamic_batch or self._input.shape[0]
        data = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=self._dtype)
        feed = {self._input.name: data.reshape(batch, *self._input.shape[1:])}
        for _ in range(max(1, self._options.loop)):
            start = time.time()
            outputs = self._ort.run(None, feed)
            end = time.time()
            if PAIRS:
                self._times.append((_float32((start - self._zero_point) * 1000.0),
                                    _float32((end - self._zero_point) * 1000.0)))
            else:
                self._times.append(_float32((end - start) * 1000.0))
        return [np.ascontiguousarray(out, dtype=np.float32) for out in outputs]

    def sumary(self) -> sumary:  # the real spelling, in every release of the backend
        return sumary(list(self._times))

    def reset_sumaryinfo(self) -> None:
        self._times.clear()

    def free_resource(self) -> None:
        pass

    def finalize(self) -> None:
        pass
