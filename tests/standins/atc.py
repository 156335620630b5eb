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

`--insert_op_conf` (static AIPP; CANN 8.0.0 ATC manual, "Configuration File Template",
https://www.hiascend.com/document/detail/en/canncommercial/800/devaids/atc/atlasatc_16_0025.html,
and "Normalization Configuration", atlasatc_16_0022.html): the file is prototxt, one `aipp_op {}`
of `key : value` fields from the template's list; a field the template does not name, a field
given twice (protobuf's text format refuses a non-repeated field set twice), a value of the
wrong type or out of its range (mean_chn an integer 0..255, min_chn 0..255, var_reci_chn
-65504..65504: the dynamic-AIPP API's ranges, aclcppdevg_03_1423/1424) fails as an E10001
invalid value naming the field. The stand-in simulates static RGB888_U8 AIPP without crop, CSC,
resize or padding (another input_format or switch fails, saying so); src_image_size_w/h must be
0 or the model's W/H (atlasatc_16_0023: the image AIPP outputs is the --input_shape size). The
OM then takes uint8 (N, H, W, 3) and its graph begins with the unit's arithmetic in fp16, in the
manual's order: channel swap (rbuv_swap_switch), then per output channel
pixel_out = [pixel_in - mean_chn - min_chn] * var_reci_chn, min_chn and var_reci_chn stored as
fp16 and each step rounded to fp16, then NCHW into the model. The real OM's reported input
shape for an AIPP input is not documented in what was read; the stand-in reports (N, H, W, 3).
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


# the aipp_op fields of the template (atlasatc_16_0025), with the type of their values
AIPP_BOOL = {"crop", "resize", "padding", "rbuv_swap_switch", "ax_swap_switch",
             "single_line_mode", "csc_switch", "support_rotation"}
AIPP_INT = {"related_input_rank", "src_image_size_w", "src_image_size_h", "load_start_pos_w",
            "load_start_pos_h", "crop_size_w", "crop_size_h", "resize_output_w",
            "resize_output_h", "left_padding_size", "right_padding_size", "top_padding_size",
            "bottom_padding_size", "max_src_image_size",
            *(f"matrix_r{r}c{c}" for r in range(3) for c in range(3)),
            *(f"output_bias_{i}" for i in range(3)), *(f"input_bias_{i}" for i in range(3)),
            *(f"mean_chn_{i}" for i in range(4))}
AIPP_FLOAT = {"padding_value", *(f"min_chn_{i}" for i in range(4)),
              *(f"var_reci_chn_{i}" for i in range(4))}
AIPP_ENUM = {"aipp_mode": {"static", "dynamic"},
             "input_format": {"YUV420SP_U8", "XRGB8888_U8", "RGB888_U8", "YUV400_U8",
                              "ARGB8888_U8", "YUYV_U8", "YUV422SP_U8", "AYUV444_U8", "RAW10",
                              "RAW12", "RAW16", "RAW24"}}
AIPP_TEXT = {"related_input_name"}
AIPP_FIELDS = AIPP_BOOL | AIPP_INT | AIPP_FLOAT | set(AIPP_ENUM) | AIPP_TEXT
FP16_MAX = 65504.0


def invalid_aipp(field: str, value: object, why: str) -> None:
    invalid("insert_op_conf", f"{field}: {value}", f": {why}")


def parse_aipp(path: Path) -> dict:
    """The one aipp_op of a static AIPP file, values typed; refuses what atc refuses."""
    if not path.is_file():
        invalid("insert_op_conf", path, ": file does not exist")
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    match = re.fullmatch(r"\s*aipp_op\s*\{(.*)\}\s*", text, re.DOTALL)
    if not match:
        invalid("insert_op_conf", path, ": expected one aipp_op { ... } block")
    fields: dict = {}
    for line in match.group(1).splitlines():
        if not line.strip():
            continue
        item = re.fullmatch(r"\s*([a-z_0-9]+)\s*:\s*(\S+)\s*", line)
        if not item:
            invalid("insert_op_conf", line.strip(), ": not a `field : value` line")
        key, raw = item.groups()
        if key not in AIPP_FIELDS:
            invalid_aipp(key, raw, "no such aipp_op field")
        if key in fields:
            invalid_aipp(key, raw, "non-repeated field is specified multiple times")
        if key in AIPP_BOOL:
            if raw not in ("true", "false", "1", "0"):
                invalid_aipp(key, raw, "expected true or false")
            fields[key] = raw in ("true", "1")
        elif key in AIPP_INT:
            if not re.fullmatch(r"-?\d+", raw):
                invalid_aipp(key, raw, "expected an integer")
            fields[key] = int(raw)
        elif key in AIPP_FLOAT:
            try:
                fields[key] = float(raw)
            except ValueError:
                invalid_aipp(key, raw, "expected a number")
        elif key in AIPP_ENUM:
            if raw not in AIPP_ENUM[key]:
                invalid_aipp(key, raw, f"expected one of {', '.join(sorted(AIPP_ENUM[key]))}")
            fields[key] = raw
        else:
            fields[key] = raw.strip('"')
    if "aipp_mode" not in fields:
        invalid_aipp("aipp_mode", "(missing)", "aipp_mode is required")
    if fields["aipp_mode"] == "static" and "input_format" not in fields:
        invalid_aipp("input_format", "(missing)", "static AIPP requires input_format")
    for index in range(4):
        mean = fields.get(f"mean_chn_{index}", 0)
        if not 0 <= mean <= 255:
            invalid_aipp(f"mean_chn_{index}", mean, "out of range [0, 255]")
        low = fields.get(f"min_chn_{index}", 0.0)
        if not 0.0 <= low <= 255.0:
            invalid_aipp(f"min_chn_{index}", low, "out of range [0, 255]")
        reci = fields.get(f"var_reci_chn_{index}", 1.0)
        if not -FP16_MAX <= reci <= FP16_MAX:
            invalid_aipp(f"var_reci_chn_{index}", reci, "out of range [-65504, 65504]")
    for key in ("src_image_size_w", "src_image_size_h"):
        if not 0 <= fields.get(key, 0) <= 4096:
            invalid_aipp(key, fields[key], "out of range [0, 4096]")
    return fields


def _round16(source: str, target: str) -> list:
    return _cast_pair(source, target)


def insert_aipp(model: onnx.ModelProto, fields: dict, shape: list[int]) -> onnx.ModelProto:
    """The graph behind a static RGB888_U8 AIPP op: uint8 (N, H, W, 3) in, the unit's fp16
    arithmetic, NCHW into the original first layer."""
    unsupported = [k for k in ("crop", "resize", "padding", "csc_switch", "ax_swap_switch",
                               "single_line_mode") if fields.get(k)]
    if fields["aipp_mode"] != "static" or fields["input_format"] != "RGB888_U8" or unsupported:
        what = unsupported[0] if unsupported else (
            f"aipp_mode {fields['aipp_mode']}" if fields["aipp_mode"] != "static"
            else f"input_format {fields['input_format']}")
        fail("E10001", f"[--insert_op_conf]: {what} is not simulated by this stand-in (static "
             "RGB888_U8 without crop, resize, padding or CSC only)")
    _, _, height, width = shape
    for key, model_size in (("src_image_size_w", width), ("src_image_size_h", height)):
        if fields.get(key, 0) not in (0, model_size):
            invalid_aipp(key, fields[key], f"without crop or padding the image must be the "
                         f"model's {model_size} (--input_shape)")
    graph = model.graph
    (original,) = graph.input
    name = original.name
    normalized = f"{name}__aipp"
    for node in graph.node:
        node.input[:] = [normalized if x == name else x for x in node.input]
    half = np.float16
    mean = np.array([fields.get(f"mean_chn_{i}", 0) for i in range(3)], dtype=np.float32)
    low = np.array([fields.get(f"min_chn_{i}", 0.0) for i in range(3)]).astype(half)
    reci = np.array([fields.get(f"var_reci_chn_{i}", 1.0) for i in range(3)]).astype(half)
    constants = {f"{name}__aipp_mean": mean, f"{name}__aipp_min": low.astype(np.float32),
                 f"{name}__aipp_reci": reci.astype(np.float32)}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    nodes = [helper.make_node("Cast", [name], [f"{name}__f"], to=TensorProto.FLOAT)]
    pixels = f"{name}__f"
    if fields.get("rbuv_swap_switch"):  # R and B swapped before the normalization
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64),
                                                         f"{name}__aipp_swap"))
        nodes.append(helper.make_node("Gather", [pixels, f"{name}__aipp_swap"],
                                      [f"{name}__swapped"], axis=3))
        pixels = f"{name}__swapped"
    # pixel - mean_chn: integers, exact; then - min_chn and * var_reci_chn, each rounded to fp16
    nodes += [helper.make_node("Sub", [pixels, f"{name}__aipp_mean"], [f"{name}__centred"]),
              *_round16(f"{name}__centred", f"{name}__centred16"),
              helper.make_node("Sub", [f"{name}__centred16", f"{name}__aipp_min"],
                               [f"{name}__shifted"]),
              *_round16(f"{name}__shifted", f"{name}__shifted16"),
              helper.make_node("Mul", [f"{name}__shifted16", f"{name}__aipp_reci"],
                               [f"{name}__scaled"]),
              *_round16(f"{name}__scaled", f"{name}__scaled16"),
              helper.make_node("Transpose", [f"{name}__scaled16"], [normalized],
                               perm=[0, 3, 1, 2])]
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])
    batch = shape[0] if shape[0] > 0 else "batch"
    graph.input.remove(original)
    graph.input.insert(0, helper.make_tensor_value_info(name, TensorProto.UINT8,
                                                        [batch, height, width, 3]))
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
    aipp = parse_aipp(Path(options["insert_op_conf"])) if "insert_op_conf" in options else None
    if aipp is not None and options.get("input_format", "NCHW") != "NCHW":
        invalid("input_format", options["input_format"], ": AIPP feeds an ONNX model NCHW only")
    header = {
        "standin": "om",
        "soc_version": options["soc_version"],
        "precision_mode": mode,
        "input_name": graph_input.name,
        "input_shape": shape,
        "input_dtype": "float32",
        "dynamic_batch_size": sizes,
        "output_name": model.graph.output[0].name,
    }
    target = Path(options["output"] + ".om")
    converted = simulate_precision(model, mode)
    if aipp is not None:
        converted = insert_aipp(converted, aipp, shape)
        header.update({"input_shape": [shape[0], shape[2], shape[3], 3], "input_dtype": "uint8",
                       "aipp": aipp})
    target.write_bytes(json.dumps(header).encode() + b"\n" + converted.SerializeToString())
    print("ATC run success, welcome to the next use.")


if __name__ == "__main__":
    main(sys.argv[1:])
