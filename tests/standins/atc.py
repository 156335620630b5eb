"""Stand-in for CANN's `atc` (Ascend Tensor Compiler) where CANN cannot be installed.

It follows atc's documented command line (../shared/docs/ascend-reference.md, section 2):
`--key=value` options, `--framework=5` for ONNX, `--input_shape="<input>:<n>,3,<h>,<w>"` naming
a real input of the model, `-1` batch with `--dynamic_batch_size`, a known `--soc_version`; on
success it prints "ATC run success, welcome to the next use." and writes `<output>.om`, on an
error it prints atc's failure line and an E-code and exits 1. Every call is appended to
$RUNNER_STANDIN_LOG as a JSON line.

The "OM" file is one JSON header line (what atc was told) followed by the ONNX bytes, which the
stand-in aclruntime runs with ONNX Runtime: outputs are a deterministic function of the input.
"""

import json
import os
import re
import sys
from pathlib import Path

import onnx

SOC_VERSION = re.compile(r"^Ascend(310|310P[1-7]|310B[1-4]|910A|910B|910B[1-4]|910ProB)$")
OPTIONS = {"model", "framework", "output", "input_format", "input_shape", "soc_version",
           "dynamic_batch_size", "precision_mode", "log", "op_select_implmode", "output_type",
           "insert_op_conf", "input_fp16_nodes", "enable_small_channel", "keep_dtype"}
PRECISION_MODES = {"force_fp32", "force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype",
                   "allow_mix_precision"}
LOG_LEVELS = {"debug", "info", "warning", "error", "null"}


def record(entry: dict) -> None:
    log = os.environ.get("RUNNER_STANDIN_LOG")
    if log:
        with open(log, "a") as stream:
            stream.write(json.dumps(entry) + "\n")


def fail(code: str, message: str) -> None:
    print("ATC run failed, Please check the detail log, Try 'atc --help' for more information")
    print(f"{code}: {message}")
    sys.exit(1)


def invalid(option: str, value: object, why: str = "") -> None:
    fail("E10001", f"Value [{value}] for parameter [--{option}] is invalid{why}")


def main(argv: list[str]) -> None:
    record({"tool": "atc", "argv": argv, "cwd": os.getcwd()})
    options = {}
    for argument in argv:
        match = re.fullmatch(r"--([a-z_]+)=(.*)", argument)
        if not match:
            fail("E10001", f"Value [{argument}] is invalid: options are --key=value")
        key, value = match.groups()
        if key not in OPTIONS:
            fail("E10001", f"Parameter [--{key}] is not supported")
        options[key] = value
    for required in ("model", "framework", "output", "soc_version"):
        if required not in options:
            fail("E10004", f"Argument [--{required}] required")
    if options["framework"] != "5":
        invalid("framework", options["framework"], ": this stand-in converts ONNX (5) only")
    if not SOC_VERSION.match(options["soc_version"]):
        invalid("soc_version", options["soc_version"])
    if options.get("input_format", "NCHW") != "NCHW":
        invalid("input_format", options["input_format"])
    if options.get("precision_mode", "force_fp16") not in PRECISION_MODES:
        invalid("precision_mode", options["precision_mode"])
    if options.get("log", "null") not in LOG_LEVELS:
        invalid("log", options["log"])
    model_path = Path(options["model"])
    if not model_path.is_file():
        invalid("model", model_path, ": file does not exist")
    model = onnx.load(str(model_path))
    (graph_input,) = model.graph.input
    dims = [d.dim_value if d.dim_value else -1 for d in graph_input.type.tensor_type.shape.dim]
    name, _, shape_text = options.get("input_shape", "").rpartition(":")
    if name != graph_input.name:
        fail("E10016", f"Input parameter [--input_shape]'s opname [{name}] is not found in model")
    shape = [int(x) for x in shape_text.split(",")]
    if len(shape) != 4 or shape[1:] != dims[1:] or shape[0] == 0 or shape[0] < -1:
        invalid("input_shape", options["input_shape"])
    sizes = None
    if "dynamic_batch_size" in options:
        sizes = [int(x) for x in options["dynamic_batch_size"].split(",")]
        distinct = len(set(sizes)) == len(sizes)
        if shape[0] != -1 or not (distinct and 2 <= len(sizes) <= 100):
            fail("E10035", "[--dynamic_batch_size] needs -1 as the batch of --input_shape and "
                 "2 to 100 distinct sizes")
    elif shape[0] == -1:
        fail("E10001", "a -1 dimension in [--input_shape] needs [--dynamic_batch_size]")
    header = {
        "standin": "om",
        "soc_version": options["soc_version"],
        "precision_mode": options.get("precision_mode", "force_fp16"),
        "input_name": graph_input.name,
        "input_shape": shape,
        "dynamic_batch_size": sizes,
        "output_name": model.graph.output[0].name,
    }
    target = Path(options["output"] + ".om")
    target.write_bytes(json.dumps(header).encode() + b"\n" + model_path.read_bytes())
    print("ATC run success, welcome to the next use.")


if __name__ == "__main__":
    main(sys.argv[1:])
