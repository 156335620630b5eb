"""`python -m runner --help` is Hydra's help page, made without Hydra's slow listing of every
config group (benchmarks/cli_startup.py times it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runner.config import PROJECT_ROOT

HYDRAS_OWN = "import sys; sys.argv[0] = 'runner'; from runner import cli; cli.main()"


@pytest.mark.parametrize("args", [["--help"], ["--help", "model=inceptionv4", "--resolve"],
                                  ["-h", "experiment=alexnet_310p3", "bs=4"]])
def test_the_fast_help_page_is_hydras(args: list[str]) -> None:
    def page(command: list[str]) -> str:
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=120, check=True)
        return done.stdout

    fast = page([sys.executable, "-m", "runner", *args])
    assert fast == page([sys.executable, "-c", HYDRAS_OWN, *args])  # Hydra's own app_help
    assert "model: alexnet, efficientnet_b0, inceptionv4," in fast
    assert "published:" in fast  # the composed config, the guide's figures included


def test_the_console_command_is_installed_beside_python_m_runner() -> None:
    """Issue 32: `runner ...` (setup.cfg's console_scripts, installed by scripts/setup.sh)."""
    import subprocess
    import sys
    from pathlib import Path

    command = Path(sys.executable).with_name("runner")
    assert command.is_file(), f"{command} is missing: run bash scripts/setup.sh"
    page = subprocess.run([str(command), "--help"], capture_output=True, text=True, cwd="/",
                          timeout=120, check=True).stdout
    assert page.startswith("runner: offline inference of image classifiers")
    assert "== Configuration groups ==" in page and "model: alexnet" in page


def test_the_printed_link_opens_mlflow_3s_runs_view() -> None:
    from runner import tracking

    assert tracking.run_url("sqlite:///mlflow.db", "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning")
    assert tracking.run_url("http://user:secret@mlflow.example:8080/", "3", "abc").startswith(
        "http://user:***@mlflow.example:8080/#/experiments/3/runs/abc?workflowType=")
