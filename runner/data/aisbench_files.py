"""Per-image result files as ais_bench writes them, and as the guides' accuracy scripts read them.

ais_bench (2022-11 on) names the output of input file `<stem>.bin` `<stem>_<output index>.<fmt>`
(`<stem>` is the input's basename up to its first '.'), and writes:
  TXT  the output reshaped to (-1, last dim), each row as `np.savetxt(np.c_[row], fmt="%f",
       newline=" ")` then `b"\n"`: every value followed by a space, a line break after each row
       (`save_data_to_files`, ais_bench/infer/utils.py at de5b60db, 2023-11, and
       infer/common/utils.py at 8da7f645, 2025-12, in the tools repository)
  NPY  `np.save` of the output array, (1, classes) for one image
  BIN  the raw float32 bytes
The guides' scripts take the image name as the file stem minus its last `_N`, parse the first line
of a TXT file as floats, and score label + 1 when there are 1001 values.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from runner.config import RESULT_FORMATS
from runner.errors import ResultFilesError

OUTPUT_INDEX = 0  # classifiers have one output
_RESULT_NAME = re.compile(rf"^(?P<stem>.+)_{OUTPUT_INDEX}\.(?P<fmt>{'|'.join(RESULT_FORMATS)})$")


def image_stem(image_name: str) -> str:
    """`ILSVRC2012_val_00000001.JPEG` -> `ILSVRC2012_val_00000001` (up to the first '.')."""
    return image_name.split(".")[0]


def result_name(image_name: str, fmt: str) -> str:
    return f"{image_stem(image_name)}_{OUTPUT_INDEX}.{fmt}"


def write_result(path: Path, logits: np.ndarray, fmt: str) -> None:
    """One image's output (a row of logits), as ais_bench writes it; by rename, never half."""
    array = np.ascontiguousarray(logits, dtype=np.float32).reshape(1, -1)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as stream:
        if fmt == "txt":
            for row in array.reshape(-1, array.shape[-1]):
                np.savetxt(stream, np.c_[row], fmt="%f", newline=" ")
                stream.write(b"\n")
        elif fmt == "npy":
            np.save(stream, array)
        elif fmt == "bin":
            array.tofile(stream)
        else:
            raise ValueError(f"unknown result format {fmt!r}")
    os.replace(tmp, path)


def write_results(folder: Path, image_names: list[str], logits: np.ndarray, fmt: str) -> int:
    """A result file per image into `folder`; files already there (a resumed run) are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, row in zip(image_names, logits, strict=True):
        target = folder / result_name(name, fmt)
        if not target.is_file():
            write_result(target, row, fmt)
            written += 1
    return written


def read_result(path: Path, num_classes: int) -> np.ndarray:
    """The float32 logits of one result file, checked to hold `num_classes` values."""
    fmt = path.suffix[1:]
    try:
        if fmt == "txt":
            with open(path) as stream:  # the guides read the first line only
                values = np.array(stream.readline().split(), dtype=np.float64).astype(np.float32)
        elif fmt == "npy":
            values = np.load(path, allow_pickle=False).astype(np.float32).reshape(-1)
        else:
            values = np.fromfile(path, dtype=np.float32)
    except (OSError, ValueError) as error:
        raise ResultFilesError(f"result file {path} cannot be read ({error})") from None
    if values.size != num_classes:
        as_read = " read as float32" if fmt == "bin" else ""
        raise ResultFilesError(
            f"result file {path} holds {values.size} values{as_read}, but model.num_classes="
            f"{num_classes}: pass the model= that produced these results (one image per file)"
        )
    return values


def find_results(folder: Path, fmt: str = "auto") -> tuple[dict[str, Path], str]:
    """{image stem: result file} of the output-0 files in `folder`, and their format.

    Other files (ais_bench's `*_summary.json`, outputs 1..n) are ignored. With `fmt="auto"` the
    folder must hold exactly one format.
    """
    if not folder.is_dir():
        raise ResultFilesError(
            f"results folder {folder} does not exist: pass score.results=/path/to/the folder "
            "holding ais_bench's <image>_0.txt|.npy|.bin files"
        )
    by_format: dict[str, dict[str, Path]] = {}
    for path in folder.iterdir():
        match = _RESULT_NAME.match(path.name)
        if match and path.is_file():
            by_format.setdefault(match["fmt"], {})[match["stem"]] = path
    if fmt == "auto":
        if len(by_format) > 1:
            raise ResultFilesError(
                f"results folder {folder} holds {', '.join(sorted(by_format))} result files: "
                "pass score.format= to choose one"
            )
        fmt = next(iter(by_format), "txt")
    files = by_format.get(fmt, {})
    if not files:
        raise ResultFilesError(
            f"results folder {folder} holds no <image>_{OUTPUT_INDEX}.{fmt} files "
            f"(ais_bench's output names)"
        )
    return files, fmt
