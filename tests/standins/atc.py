"""Stand-in for CANN's `atc` (Ascend Tensor Compiler) where CANN cannot be installed.

It follows atc's documented command line (../shared/docs/ascend-reference.md, section 2):
`--key=value` options, `--framework=5` for ONNX, `--input_shape="<input>:<n>,3,<h>,<w>"` (or
`<n>,<h>,<w>,3` with `--input_format=ND`, a channels-last input) naming a real input of the
model, `-1` batch with `--dynamic_batch_size`, a known `--soc_version`; on success it prints
"ATC run success, welcome to the next use." and writes `<output>.om`, on an error it prints
atc's failure line and an E-code and exits 1. Every call is appended to $RUNNER_STANDIN_LOG as
a JSON line.

The "OM" file is one JSON header line (what atc was told) followed by ONNX bytes, which the
stand-in aclruntime runs with ONNX Runtime: outputs are a deterministic function of the input.

Numerics of `--precision_mode` (CANN's atc documentation, "--precision_mode", e.g. CANN 8.0.0
atlasatcparam_16_0067 and CANN 6.0.1 aoepar_16_044): the ONNX graph stored in the OM is rewritten
so that ONNX Runtime computes what the NPU's units would:
  force_fp16, allow_mix_precision(_fp16)   every float tensor in fp16: the input, the weights and
                                           every operator's output are rounded to fp16
  allow_fp32_to_fp16                       matrix (cube) operators in fp16 (inputs, weights and
                                           outputs rounded), vector operators keep fp32
  force_fp32, cube_fp16in_fp32out          cube operators take fp16 inputs and weights and give
                                           fp32 outputs ("fp16 in, fp32 out" is the preferred
                                           cube implementation); vector operators keep fp32
  must_keep_origin_dtype                   fp32 throughout; only where the cube unit has fp32
                                           (Ascend910B1..B4, Atlas A2): on other socs atc fails,
                                           as CANN 6.0.1's manual says it does for Conv2D
Rounding is a Cast to float16 and back after each rounded tensor (weights are rounded in place):
ONNX Runtime then multiplies fp16-representable values and accumulates in fp32, as the cube unit
does (fp16 inputs, fp32 accumulation), and the next operator sees fp16-stored activations.
"""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SOC_VERSION = re.compile(r"^Ascend(310|310P[1-7]|310B[1-4]|910A|910B|910B[1-4]|910ProB)$")
OPTIONS = {"model", "framework", "output", "input_format", "input_shape", "soc_version",
           "dynamic_batch_size", "precision_mode", "log", "op_select_implmode", "output_type",
           "insert_op_conf", "input_fp16_nodes", "enable_small_channel", "keep_dtype"}
PRECISION_MODES = {"force_fp32", "cube_fp16in_fp32out", "force_fp16", "allow_fp32_to_fp16",
                   "must_keep_origin_dtype", "allow_mix_precision", "allow_mix_precision_fp16"}
# how each mode computes: (what is rounded to fp16, whether cube operators' outputs are rounded)
ALL_FP16 = {"force_fp16", "allow_mix_precision", "allow_mix_precision_fp16"}
CUBE_FP16 = {"allow_fp32_to_fp16"}  # cube inputs and outputs in fp16
CUBE_FP16_IN = {"force_fp32", "cube_fp16in_fp32out"}  # cube inputs in fp16, outputs fp32
CUBE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}  # matrix operators, run on the cube unit
FP32_CUBE_SOCS = re.compile(r"^Ascend910B[1-4]$")  # Atlas A2: the cube unit has fp32
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


def _cast_pair(source: str, target: str) -> list:
    """Nodes rounding the float32 tensor `source` to fp16 and back into `target`."""
    half = f"{target}__fp16"
    return [helper.make_node("Cast", [source], [half], to=TensorProto.FLOAT16),
            helper.make_node("Cast", [half], [target], to=TensorProto.FLOAT)]


def simulate_precision(model: onnx.ModelProto, mode: str) -> onnx.ModelProto:
    """The graph rewritten to compute as `--precision_mode=mode` makes the NPU compute."""
    if mode not in ALL_FP16 | CUBE_FP16 | CUBE_FP16_IN:
        return model
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    float_tensors = {v.name for v in [*inferred.graph.value_info, *graph.input, *graph.output]
                     if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    initializers = {t.name: t for t in graph.initializer}
    everything = mode in ALL_FP16

    def round_weight(name: str) -> None:
        tensor = initializers[name]
        if tensor.data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(values, name))

    nodes: list = []
    copies: dict[str, str] = {}  # a float32 tensor -> its fp16-rounded copy

    def rounded(name: str) -> str:
        if name not in copies:
            copies[name] = f"{name}__r16"
            nodes.extend(_cast_pair(name, copies[name]))
        return copies[name]

    produced = {name for node in graph.node for name in node.output}
    if everything:
        for name in initializers:
            round_weight(name)
    for node in list(graph.node):
        cube = node.op_type in CUBE_OPS
        inputs = list(node.input)
        for index, name in enumerate(inputs):
            if not name or name in initializers:
                if name and cube and index < 2 and not everything:
                    round_weight(name)  # the weight; a bias stays fp32 (fp32 accumulator)
                continue
            if name in float_tensors and ((everything and name not in produced)
                                          or (cube and index < 2 and not everything)):
                inputs[index] = rounded(name)
        del node.input[:]
        node.input.extend(inputs)
        outputs = list(node.output)
        after = []
        if everything or (cube and mode in CUBE_FP16):
            for index, name in enumerate(outputs):
                if name in float_tensors:  # consumers and graph outputs read the rounded value
                    outputs[index] = f"{name}__raw"
                    after += _cast_pair(outputs[index], name)
        del node.output[:]
        node.output.extend(outputs)
        nodes += [node, *after]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


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
    # an ONNX model's input formats (CANN's atc manual, "--input_format", e.g. CANN 8.0
    # atlasatcparam_16_0015): NCHW (default), NCDHW, or ND (any layout, e.g. channels last)
    if options.get("input_format", "NCHW") not in ("NCHW", "NCDHW", "ND"):
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
    mode = options.get("precision_mode", "force_fp16")
    if mode == "must_keep_origin_dtype" and not FP32_CUBE_SOCS.match(options["soc_version"]):
        cube_ops = sorted({n.op_type for n in model.graph.node if n.op_type in CUBE_OPS})
        if cube_ops:
            fail("E19999", f"[--precision_mode=must_keep_origin_dtype]: operator {cube_ops[0]} "
                 f"has no float32 implementation on {options['soc_version']} (the stand-in "
                 "follows CANN 6.0.1's manual: must_keep_origin_dtype cannot be used then)")
    header = {
        "standin": "om",
        "soc_version": options["soc_version"],
        "precision_mode": mode,
        "input_name": graph_input.name,
        "input_shape": shape,
        "dynamic_batch_size": sizes,
        "output_name": model.graph.output[0].name,
    }
    target = Path(options["output"] + ".om")
    converted = simulate_precision(model, mode)
    target.write_bytes(json.dumps(header).encode() + b"\n" + converted.SerializeToString())
    print("ATC run success, welcome to the next use.")


if __name__ == "__main__":
    main(sys.argv[1:])
