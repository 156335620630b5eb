"""Checks on an ONNX file before a runtime or a converter is given it."""

from __future__ import annotations

from pathlib import Path

import onnx

from runner.errors import ModelFileError


def check(path: Path) -> None:
    """Refuse a missing, truncated or non-ONNX file with a message that says what to redo."""
    if not path.is_file():
        raise ModelFileError(f"ONNX file {path} does not exist: rerun with cache.force=[export]")
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, OSError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelFileError(
            f"ONNX file {path} is corrupt or not an ONNX model ({first_line}): rerun with "
            "cache.force=[export] to make it again"
        ) from None
