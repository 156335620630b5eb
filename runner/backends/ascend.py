"""The Ascend toolchain outside Python: the CANN environment, `npu-smi info` and `atc`.

Facts used (from CANN's documentation and the Ascend ModelZoo guides' steps): CANN's
`set_env.sh` exports ASCEND_HOME_PATH / ASCEND_TOOLKIT_HOME and puts `atc` on PATH; the
toolkit's version is the `version=` line of `<home>/<arch>-linux/ascend_toolkit_install.info`;
`npu-smi info` prints a table whose `Name` column (e.g. `310P3`) prefixed with `Ascend` is the
atc soc_version; atc prints `ATC run success` and writes `<--output>.om`.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from runner.backends import ConversionError
from runner.config import ChipConfig, input_shape
from runner.errors import ConfigError, ToolMissingError
from runner.tools import run_tool, tool_output

SET_ENV_HINT = "source /usr/local/Ascend/ascend-toolkit/set_env.sh (or your CANN install's)"
ATC_SUCCESS = "ATC run success"
# atc --precision_mode for chip.precision (CANN's atc manual, "--precision_mode"). fp16:
# force_fp16, the guides' mode and atc's default for inference chips. fp32: must_keep_origin_dtype,
# the only mode that keeps matrix (cube) operators in float32 - which only the Atlas A2 chips
# (Ascend910B1..B4) can: on 310/310P/910A the cube unit is fp16-only, and force_fp32 there still
# feeds the cube fp16 inputs (fp32 outputs), which parity's fp32 tolerance would rightly fail.
PRECISION_MODES = {"fp16": "force_fp16", "fp32": "must_keep_origin_dtype"}
FP32_CUBE_SOC = re.compile(r"^Ascend910B[1-4]$")
# every other precision mode computes matrix operators in fp16 (fp16 inputs at least)
FP32_MODES = ("must_keep_origin_dtype",)
# options the runner sets from the model and chip config; atc_options may not repeat them
MANAGED_OPTIONS = ("model", "framework", "output", "input_format", "input_shape", "soc_version",
                   "dynamic_batch_size", "insert_op_conf")
# an Ascend chip name in the Name column: 310, 310P3, 310B4, 910B3, 910B2C, 910ProB, ...
CHIP_NAME = re.compile(r"^(310|710|910)[A-Za-z0-9]*$")


def cann_home() -> str | None:
    return os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME") or None


def cann_version() -> str:
    """The CANN toolkit version set up in this shell, or 'unknown'."""
    home = cann_home()
    if home is None:
        return "not set up"
    for info in sorted(Path(home).glob("*-linux/ascend_toolkit_install.info")):
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip().lower() == "version" and value.strip():
                return value.strip()
    return "unknown"


def require_atc() -> str:
    """The atc executable; the error says whether CANN or only atc is missing."""
    atc = shutil.which("atc")
    if atc is not None:
        return atc
    home = cann_home()
    if home is None:
        raise ToolMissingError(
            "CANN is not set up in this shell (ASCEND_HOME_PATH is unset) and atc is not on "
            f"PATH: {SET_ENV_HINT}, after installing the CANN toolkit; or pick another chip "
            "(chip=cpu)"
        )
    raise ToolMissingError(
        f"atc is not on PATH although CANN is set up (ASCEND_HOME_PATH={home}): atc comes with "
        f"the CANN toolkit package (not nnrt); install it there, then {SET_ENV_HINT}"
    )


@dataclass
class NpuInfo:
    """What `npu-smi info` says: the driver tool's version and the chip name of each device id
    (the id aclrtSetDevice and ais_bench's device_id take)."""

    version: str = "unknown"
    devices: dict[int, str] = field(default_factory=dict)  # e.g. {0: "310P3", 1: "310P3"}

    @property
    def names(self) -> list[str]:
        """The chip names in device-id order, one per device."""
        return [self.devices[d] for d in sorted(self.devices)]


def parse_npu_smi(text: str) -> NpuInfo:
    """npu-smi's table: an NPU row (`<npu id> <name>`) names every chip row below it; a chip row
    is `<chip id> <device id>` where the header says `Chip  Device` (cards of several chips:
    Atlas 300I, 300I Duo), else `<chip id>` and the device is the NPU id (910B modules). The
    process table below (`NPU  Chip | Process id`) is not read."""
    info = NpuInfo()
    if match := re.search(r"Version:\s*(\S+)", text):
        info.version = match.group(1)
    npu: tuple[int, str] | None = None
    chips_seen = 0

    def close() -> None:
        if npu is not None and chips_seen == 0:  # a table without chip rows
            info.devices.setdefault(npu[0], npu[1])

    for line in text.splitlines():
        cells = line.strip().strip("|").split("|")
        first = cells[0].split()
        if "Process" in line:
            break
        if len(cells) < 2 or not first or not first[0].isdigit():
            continue
        if len(first) == 2 and CHIP_NAME.match(first[1]):
            close()
            npu, chips_seen = (int(first[0]), first[1]), 0
        elif npu is not None and all(token.isdigit() for token in first) and len(first) <= 2:
            device = int(first[1]) if len(first) == 2 else npu[0]
            info.devices[device] = npu[1]
            chips_seen += 1
    close()
    return info


@cache
def npu_smi_info() -> NpuInfo | None:
    """`npu-smi info`, parsed; None where npu-smi is not installed or fails."""
    output = tool_output(["npu-smi", "info"])
    return None if output is None else parse_npu_smi(output)


def resolve_soc_version(chip: ChipConfig) -> str:
    """chip.soc_version, or with `auto` the chip `npu-smi info` lists (one kind only)."""
    if chip.soc_version != "auto":
        assert chip.soc_version is not None  # the schema requires it for runtime ais_bench
        return chip.soc_version
    info = npu_smi_info()
    if info is None:
        raise ToolMissingError(
            "chip.soc_version=auto reads the chip from `npu-smi info`, and npu-smi (the NPU "
            "driver's tool) is not on PATH or failed: install the NPU driver, or set "
            "chip.soc_version (e.g. Ascend310P3; atc needs no NPU to convert)"
        )
    kinds = sorted(set(info.names))
    if len(kinds) != 1:
        found = ", ".join(kinds) if kinds else "no NPU"
        raise ConfigError(
            f"chip.soc_version=auto: npu-smi info lists {found}; set chip.soc_version explicitly"
        )
    return f"Ascend{kinds[0]}"


def precision_mode(precision: str, soc_version: str, override: str | None = None) -> str:
    """atc's --precision_mode for chip.precision on this soc (`override`: chip.atc_options'
    precision_mode). fp32 must mean fp32 matrix operators, or parity's fp32 tolerance would judge
    fp16 arithmetic: refused where the chip cannot, and with a mode that computes in fp16."""
    if precision == "fp32" and not FP32_CUBE_SOC.match(soc_version):
        raise ConfigError(
            f"chip.precision=fp32 on {soc_version}: its cube unit computes matrix operators "
            "(Conv, Gemm) in fp16 only, so atc cannot keep them in float32 "
            "(must_keep_origin_dtype); set chip.precision=fp16 (atc force_fp16; add "
            "chip.atc_options.precision_mode=allow_fp32_to_fp16 to keep the other operators in "
            "fp32)"
        )
    mode = override or PRECISION_MODES[precision]
    if precision == "fp32" and mode not in FP32_MODES:
        raise ConfigError(
            f"chip.atc_options.precision_mode={mode} computes matrix operators from fp16 "
            f"inputs, but chip.precision=fp32 (judged by parity.tolerance.fp32): remove the "
            f"option (fp32 uses must_keep_origin_dtype) or set chip.precision=fp16"
        )
    return mode


def atc_options(chip: ChipConfig, soc_version: str | None = None) -> dict[str, str]:
    """The options beyond the model's own: precision_mode from chip.precision (see
    precision_mode), log=error, then chip.atc_options (which may override log)."""
    for key in chip.atc_options:
        if key in MANAGED_OPTIONS:
            raise ConfigError(
                f"chip.atc_options.{key} is set by the runner (from the model, bs, "
                "chip.soc_version, chip.dynamic_batch_sizes or, for insert_op_conf, "
                "model.preprocess.on_device): remove it"
            )
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(key)):
            raise ConfigError(f"chip.atc_options.{key} is not an atc option name")
    extra = {str(k): str(v).lower() if isinstance(v, bool) else str(v)
             for k, v in chip.atc_options.items()}
    soc = soc_version or chip.soc_version or "auto"
    options = {"precision_mode": precision_mode(chip.precision, soc,
                                                extra.pop("precision_mode", None)),
               "log": "error"}
    options.update(extra)
    return options


# atc's --input_format for an ONNX model takes NCHW, NCDHW or ND (CANN's atc manual,
# "--input_format", e.g. CANN 8.0 atlasatcparam_16_0015): a channels-last input is ND
ATC_INPUT_FORMATS = {"NCHW": "NCHW", "NHWC": "ND"}


def atc_arguments(input_name: str, bs: int, size: int, layout: str, chip: ChipConfig,
                  soc_version: str) -> list[str]:
    """Everything atc is told except the paths: the OM model depends on exactly these."""
    batch = -1 if chip.dynamic_batch_sizes else bs
    shape = ",".join(map(str, input_shape(batch, size, layout)))
    arguments = ["--framework=5", f"--input_format={ATC_INPUT_FORMATS[layout]}",
                 f"--input_shape={input_name}:{shape}", f"--soc_version={soc_version}"]
    if chip.dynamic_batch_sizes:
        arguments.append(f"--dynamic_batch_size={','.join(map(str, chip.dynamic_batch_sizes))}")
    arguments += [f"--{key}={value}" for key, value in atc_options(chip, soc_version).items()]
    return arguments


def run_atc(onnx_path: Path, out_dir: Path, arguments: list[str]) -> tuple[Path, list[str]]:
    """Convert with atc into out_dir; the OM file and the command line as run."""
    require_atc()
    stem = out_dir / "model"
    command = ["atc", f"--model={onnx_path}", arguments[0], f"--output={stem}", *arguments[1:]]
    # atc writes kernel_meta/ and fusion_result.json into its working directory
    result = run_tool(command, timeout_s=None, cwd=out_dir)
    if result is None:
        raise ToolMissingError(f"atc could not be started: {SET_ENV_HINT}")
    log = out_dir / "atc.log"
    log.write_text(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
    if result.returncode != 0 or ATC_SUCCESS not in result.stdout:
        lines = [x.strip() for x in (result.stdout + result.stderr).splitlines() if x.strip()]
        errors = [x for x in lines if re.search(r"\bE\d{5}\b|error", x, re.IGNORECASE)]
        reason = (errors or lines or ["no output"])[0]
        raise ConversionError(
            f"atc failed (exit {result.returncode}) converting {onnx_path.name}: {reason}; "
            f"the whole output is in {log}"
        )
    # some CANN releases add a suffix (e.g. _linux_x86_64) to the --output name
    made = sorted(out_dir.glob("model*.om"))
    if len(made) != 1:
        raise ConversionError(
            f"atc reported success but {out_dir} holds {len(made)} .om files, expected one; "
            f"see {log}"
        )
    return made[0], command
