"""The Ascend toolchain outside Python: the CANN environment, `npu-smi info` and `atc`.

Facts used (see ../shared/docs/ascend-reference.md): CANN's `set_env.sh` exports
ASCEND_HOME_PATH / ASCEND_TOOLKIT_HOME and puts `atc` on PATH; the toolkit's version is the
`version=` line of `<home>/<arch>-linux/ascend_toolkit_install.info`; `npu-smi info` prints a
table whose `Name` column (e.g. `310P3`) prefixed with `Ascend` is the atc soc_version; atc
prints `ATC run success` and writes `<--output>.om`.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from runner.backends import ConversionError
from runner.config import ChipConfig
from runner.errors import ConfigError, ToolMissingError
from runner.tools import run_tool, tool_output

SET_ENV_HINT = "source /usr/local/Ascend/ascend-toolkit/set_env.sh (or your CANN install's)"
ATC_SUCCESS = "ATC run success"
# atc --precision_mode for chip.precision: the guides keep atc's default for inference chips,
# force_fp16; fp32 asks atc to keep float32 where the chip can
PRECISION_MODES = {"fp16": "force_fp16", "fp32": "force_fp32"}
# options the runner sets from the model and chip config; atc_options may not repeat them
MANAGED_OPTIONS = ("model", "framework", "output", "input_format", "input_shape", "soc_version",
                   "dynamic_batch_size")
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
    """What `npu-smi info` says: the driver tool's version and each NPU's chip name."""

    version: str = "unknown"
    names: list[str] = field(default_factory=list)  # e.g. ["310P3", "310P3"], one per NPU


def parse_npu_smi(text: str) -> NpuInfo:
    info = NpuInfo()
    if match := re.search(r"Version:\s*(\S+)", text):
        info.version = match.group(1)
    for line in text.splitlines():
        cells = line.strip().strip("|").split("|")
        first = cells[0].split()
        # NPU rows: "<npu id> <chip name> | <health> | ..."; chip rows carry ids only
        if len(cells) > 1 and len(first) == 2 and first[0].isdigit() and CHIP_NAME.match(first[1]):
            info.names.append(first[1])
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


def atc_options(chip: ChipConfig) -> dict[str, str]:
    """The options beyond the model's own: precision_mode from chip.precision, log=error, then
    chip.atc_options (which may override those two)."""
    for key in chip.atc_options:
        if key in MANAGED_OPTIONS:
            raise ConfigError(
                f"chip.atc_options.{key} is set by the runner (from the model, bs, "
                "chip.soc_version or chip.dynamic_batch_sizes): remove it"
            )
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(key)):
            raise ConfigError(f"chip.atc_options.{key} is not an atc option name")
    options = {"precision_mode": PRECISION_MODES[chip.precision], "log": "error"}
    options.update({str(k): str(v).lower() if isinstance(v, bool) else str(v)
                    for k, v in chip.atc_options.items()})
    return options


def atc_arguments(input_name: str, bs: int, height: int, width: int, chip: ChipConfig,
                  soc_version: str) -> list[str]:
    """Everything atc is told except the paths: the OM model depends on exactly these."""
    batch = "-1" if chip.dynamic_batch_sizes else str(bs)
    arguments = ["--framework=5", "--input_format=NCHW",
                 f"--input_shape={input_name}:{batch},3,{height},{width}",
                 f"--soc_version={soc_version}"]
    if chip.dynamic_batch_sizes:
        arguments.append(f"--dynamic_batch_size={','.join(map(str, chip.dynamic_batch_sizes))}")
    arguments += [f"--{key}={value}" for key, value in atc_options(chip).items()]
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
