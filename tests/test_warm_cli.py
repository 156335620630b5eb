"""The warm CLI (tests/warm_cli.py) is the CLI as a fresh process runs it: same exit status,
stdout and stderr, working folder and environment, PYTHONPATH included."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests import warm_cli


def both(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[
        subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    return (warm_cli.run_cli(args, cwd=cwd, env=env, timeout=120, fresh=False),
            warm_cli.run_cli(args, cwd=cwd, env=env, timeout=120, fresh=True))


def test_a_refused_config_exits_and_prints_as_a_fresh_process_does(tmp_path: Path) -> None:
    warm, fresh = both(["--cfg", "job", "bs=0"], warm_cli.PROJECT_ROOT, dict(os.environ))
    assert warm.returncode == fresh.returncode == 1
    assert warm.stdout == fresh.stdout and "bs: 0" in warm.stdout
    assert warm.stderr == fresh.stderr and "bs=0 must be a positive integer" in warm.stderr


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_the_child_has_its_own_cwd_environment_and_pythonpath(tmp_path: Path) -> None:
    """A relative dataset.root found from the run's own folder, and a model package found on the
    run's PYTHONPATH (the check that needs no work passes it, then refuses the empty dataset);
    the next run, without that PYTHONPATH, does not find the package: nothing is left behind."""
    (tmp_path / "site" / "warmpkg").mkdir(parents=True)
    (tmp_path / "site" / "warmpkg" / "__init__.py").write_text("")
    (tmp_path / "mydata" / "val").mkdir(parents=True)
    args = ["model.weights=random", "stage=accuracy", "model.arch=warmpkg.nosuch",
            "security.extra_arch_prefixes=[warmpkg]", "dataset.root=mydata",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    with_path = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    warm, fresh = both(args, tmp_path, with_path)
    assert warm.returncode == fresh.returncode == 1
    assert last_line(warm) == last_line(fresh)
    assert last_line(warm).startswith("runner: error: dataset.root=mydata holds neither layout")
    without = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    warm, fresh = both(args, tmp_path, without)
    assert warm.returncode == fresh.returncode == 1
    assert last_line(warm) == last_line(fresh)
    assert "module 'warmpkg' is not found on the Python path" in last_line(warm)
