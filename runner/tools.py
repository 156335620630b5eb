"""One way to ask an external tool (git, nvidia-smi, npu-smi, atc) and read its answer."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ToolResult:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_tool(command: list[str], timeout_s: float | None = 30.0,
             cwd: Path | None = None) -> ToolResult | None:
    """Run `command` to completion, capturing its text output; None where the tool is not
    installed, cannot start or outlives `timeout_s` (a tool that answers non-zero is a result)."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return ToolResult(command, done.returncode, done.stdout, done.stderr)


def tool_output(command: list[str], timeout_s: float = 30.0, cwd: Path | None = None) -> str | None:
    """A tool's standard output when it succeeds; None where it is missing or fails."""
    result = run_tool(command, timeout_s, cwd)
    return result.stdout if result is not None and result.ok else None
