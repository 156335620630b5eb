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
