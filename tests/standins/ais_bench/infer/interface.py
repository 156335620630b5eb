"""Stand-in for `ais_bench.infer.interface`: InferSession as each real release has it.

$AIS_BENCH_STANDIN_GENERATION (see aclruntime.py) picks the release. Sources read (the tools
repository's `ais-bench_workload/tool/ais_bench/ais_bench/infer/interface.py` as carried by the
GitHub fork Yanguan619/aclruntime; the msit mirror xiaobingling93-pixel/Ascend-msit for
`ait/components/benchmark/ais_bench/infer/interface.py`):

"2023" - tools wheels built before 2024-02-01. interface.py at de5b60db (2023-11-12; the file is
    unchanged since 121dd30c, 2023-01-30; commit 9d6da90 named in issue 13 is not in the fork's
    history). `infer(feeds, mode='static', custom_sizes=100000)` prepares only 'dymshape' and
    'dymdims'; ANY other mode, 'dymbatch' and unknown names included, runs the session as it is
    (no set_staticbatch, no set_dynamic_batchsize), so a dynamic-batch OM keeps its largest
    gear's input size and a smaller batch fails the backend's size check. No `out_array`
    argument. Times through `sumary()` / `reset_sumaryinfo()`.
"msit" - ait benchmark (msit's predecessor) at aca9c296d (2023-10-23): `infer` dispatches on
    `infer_mode_switch` (static -> set_staticbatch, dymbatch -> set_dynamic_batchsize(dim 0),
    dymhw, dymdims, dymshape; another name raises `wrong infer_mode`), added in ee242d5de /
    f5de7f82e (2023-09-08); `summary()` / `reset_summaryinfo()` since aca9c296d (before it,
    `sumary()` with the (start, end) pairs of 8c67f6f51, 2023-10-09).
"2024-02" - tools repository from 3ffe8a42 / b811625b (2024-02-01, "move all scripts from ait
    benchmark") to 855d583f (2024-06-03): as "msit".
"2024-06" - tools repository from ac94fb68 (2024-06-13, "inferface api add security check") on,
    followed as of 8da7f645 (2025-12-18): `InferSession.__init__` calls
    `interface_check.check_model_path_legality(model_path)`,
    `check_acl_json_path_legality`, `check_device_range_valid(device_id)` (an int 0..255, else
    TypeError / ValueError) before opening; `infer` checks `feeds` is a non-empty list
    (`check_list`, 60d3d003) and `custom_sizes` (`check_custom_size`). The path rules are in
    `common/path_security_check.py` (see interface_check.py beside this file).

Each session and each infer call is also appended to $RUNNER_STANDIN_LOG as a JSON line.
"""

import json
import os

import aclruntime
import numpy as np

GENERATION = aclruntime.GENERATION
if GENERATION == "2024-06":
    from ais_bench.infer.interface_check import (
        check_acl_json_path_legality,
        check_custom_size,
        check_device_range_valid,
        check_list,
        check_model_path_legality,
    )


def _record(entry: dict) -> None:
    log = os.environ.get("RUNNER_STANDIN_LOG")
    if log:
        with open(log, "a") as stream:
            # numpy scalars (a device id of np.int64) as their Python value
            stream.write(json.dumps(entry, default=lambda o: o.item()) + "\n")


class InferSession:
    def __init__(self, device_id: int, model_path: str, acl_json_path: str | None = None,
                 debug: bool = False, loop: int = 1) -> None:
        _record({"tool": "ais_bench", "call": "InferSession", "device_id": device_id,
                 "model_path": model_path, "pid": os.getpid(), "generation": GENERATION})
        if GENERATION == "2024-06":
            check_model_path_legality(model_path)
            check_acl_json_path_legality(acl_json_path)
            check_device_range_valid(device_id)
        self.device_id = device_id
        self.model_path = model_path
        options = aclruntime.session_options()
        if acl_json_path is not None:
            options.acl_json_path = acl_json_path
        options.log_level = 1 if debug else 2
        options.loop = loop
        self.session = aclruntime.InferenceSession(model_path, device_id, options)
        self.outputs_names = [meta.name for meta in self.session.get_outputs()]
        self.infer_mode_switch = {
            "static": self._static_prepare,
            "dymbatch": self._dymbatch_prepare,
            "dymhw": self._unsupported_prepare,
            "dymdims": self._dymdims_prepare,
            "dymshape": self._dymshape_prepare,
        }

    def get_inputs(self) -> list:
        return self.session.get_inputs()

    def get_outputs(self) -> list:
        return self.session.get_outputs()

    def set_staticbatch(self) -> None:
        self.session.set_staticbatch()

    def set_dynamic_batchsize(self, dym_batch: int) -> None:
        self.session.set_dynamic_batchsize(dym_batch)

    def set_dynamic_dims(self, dym_dims: str) -> None:
        self.session.set_dynamic_dims(dym_dims)

    def set_dynamic_shape(self, dym_shape: str) -> None:
        self.session.set_dynamic_shape(dym_shape)

    def run(self, feeds: list, out_array: bool = False) -> list:
        return self.session.run(self.outputs_names, list(feeds))

    def _inputs(self, feeds: list) -> tuple[list, list]:
        inputs, shapes = [], []
        for feed in feeds:
            if type(feed) is not np.ndarray:
                raise RuntimeError(f"type:{type(feed)} invalid")
            inputs.append(feed if GENERATION == "2023" else np.ascontiguousarray(feed))
            shapes.append(feed.shape)
        return inputs, shapes

    def _shape_string(self, shapes: list) -> str:
        names = [desc.name for desc in self.get_inputs()]
        return ";".join(f"{name}:{','.join(map(str, shape))}"
                        for name, shape in zip(names, shapes, strict=False))

    def _static_prepare(self, shapes: list, custom_sizes: object) -> None:
        self.set_staticbatch()

    def _dymbatch_prepare(self, shapes: list, custom_sizes: object) -> None:
        indesc = self.get_inputs()
        if len(shapes) != len(indesc):
            raise RuntimeError("input datas and intensors nums not matched!")
        for i, shape in enumerate(shapes):
            for j, dim in enumerate(shape):
                if indesc[i].shape[j] < 0:
                    self.set_dynamic_batchsize(dim)
                    return
                if indesc[i].shape[j] != dim:
                    raise RuntimeError("input datas and intensors dim not matched!")
        raise RuntimeError("not a dymbatch model!")

    def _dymdims_prepare(self, shapes: list, custom_sizes: object) -> None:
        self.set_dynamic_dims(self._shape_string(shapes))

    def _dymshape_prepare(self, shapes: list, custom_sizes: object) -> None:
        self.set_dynamic_shape(self._shape_string(shapes))

    def _unsupported_prepare(self, shapes: list, custom_sizes: object) -> None:
        raise RuntimeError("not a dymhw model!")

    def _record_infer(self, mode: str, shapes: list) -> None:
        _record({"tool": "ais_bench", "call": "infer", "device_id": self.device_id,
                 "mode": mode, "shapes": [list(s) for s in shapes], "generation": GENERATION})

    if GENERATION == "2023":
        def infer(self, feeds: list, mode: str = "static", custom_sizes: int = 100000) -> list:
            inputs, shapes = self._inputs(feeds)
            self._record_infer(mode, shapes)
            if mode in ("dymshape", "dymdims"):  # the only modes de5b60db prepares
                self.infer_mode_switch[mode](shapes, custom_sizes)
            return self.run(inputs, out_array=True)

        def sumary(self) -> aclruntime.sumary:
            return self.session.sumary()

        def reset_sumaryinfo(self) -> None:
            self.session.reset_sumaryinfo()
    else:
        def infer(self, feeds: list, mode: str = "static", custom_sizes: int = 100000,
                  out_array: bool = True) -> list:
            if GENERATION == "2024-06":
                check_list(feeds, max_len=1024, allow_empty=False)
                check_custom_size(custom_sizes, mode)
            inputs, shapes = self._inputs(feeds)
            self._record_infer(mode, shapes)
            if self.infer_mode_switch.get(mode) is None:
                raise RuntimeError(f'wrong infer_mode:{mode}, only support "static","dymbatch",'
                                   '"dymhw","dymdims","dymshape"')
            self.infer_mode_switch[mode](shapes, custom_sizes)
            return self.run(inputs, out_array)

        def summary(self) -> aclruntime.sumary:
            return self.session.sumary()

        def reset_summaryinfo(self) -> None:
            self.session.reset_sumaryinfo()

    def free_resource(self) -> None:
        self.session.free_resource()

    def finalize(self) -> None:
        self.session.finalize()
