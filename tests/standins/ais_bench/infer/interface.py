"""Stand-in for `ais_bench.infer.interface`: InferSession with the documented Python API.

`InferSession(device_id, model_path, acl_json_path=None, debug=False, loop=1)`, `get_inputs()`,
`get_outputs()`, `infer(feeds, mode='static', custom_sizes=100000, out_array=True)` (modes
static and dymbatch, prepared as the real one prepares them), `finalize()`, `free_resource()`;
per-call execute times through `sumary()`/`reset_sumaryinfo()` when AIS_BENCH_STANDIN_API=2023,
`summary()`/`reset_summaryinfo()` otherwise (2024-02 on). Each session and each infer call is
appended to $RUNNER_STANDIN_LOG as a JSON line.
"""

import json
import os

import aclruntime
import numpy as np

API = aclruntime.API


def _record(entry: dict) -> None:
    log = os.environ.get("RUNNER_STANDIN_LOG")
    if log:
        with open(log, "a") as stream:
            stream.write(json.dumps(entry) + "\n")


class InferSession:
    def __init__(self, device_id: int, model_path: str, acl_json_path: str | None = None,
                 debug: bool = False, loop: int = 1) -> None:
        _record({"tool": "ais_bench", "call": "InferSession", "device_id": device_id,
                 "model_path": model_path, "pid": os.getpid()})
        self.device_id = device_id
        options = aclruntime.session_options(loop=loop, log_level=1 if debug else 2,
                                             acl_json_path=acl_json_path)
        self.session = aclruntime.InferenceSession(model_path, device_id, options)
        self.outputs_names = [meta.name for meta in self.session.get_outputs()]

    def get_inputs(self) -> list:
        return self.session.get_inputs()

    def get_outputs(self) -> list:
        return self.session.get_outputs()

    def set_staticbatch(self) -> None:
        self.session.set_staticbatch()

    def set_dynamic_batchsize(self, dym_batch: int) -> None:
        self.session.set_dynamic_batchsize(dym_batch)

    def infer(self, feeds: list, mode: str = "static", custom_sizes: int = 100000,
              out_array: bool = True) -> list:
        arrays = [np.ascontiguousarray(feed) for feed in feeds]
        shapes = [array.shape for array in arrays]
        _record({"tool": "ais_bench", "call": "infer", "device_id": self.device_id,
                 "mode": mode, "shapes": [list(s) for s in shapes]})
        if mode == "static":
            self.set_staticbatch()
        elif mode == "dymbatch":
            (desc,) = self.get_inputs()
            if len(shapes) != 1:
                raise RuntimeError("input datas and intensors nums not matched!")
            if desc.shape[0] >= 0:
                raise RuntimeError("not a dymbatch model!")
            self.set_dynamic_batchsize(shapes[0][0])
        else:
            raise RuntimeError(f"wrong infer_mode:{mode} (stand-in: static and dymbatch only)")
        return self.session.run(self.outputs_names, arrays)

    def finalize(self) -> None:
        pass

    def free_resource(self) -> None:
        pass

    if API == "2023":
        def sumary(self) -> aclruntime.Summary:
            return self.session.sumary()

        def reset_sumaryinfo(self) -> None:
            self.session.reset_sumaryinfo()
    else:
        def summary(self) -> aclruntime.Summary:
            return self.session.sumary()

        def reset_summaryinfo(self) -> None:
            self.session.reset_sumaryinfo()
