"""Shared fixtures: real JPEGs, composed configs, and the CLI run in a subprocess against a real
MLflow SQLite store in a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from runner import config
from runner.config import PROJECT_ROOT, RunConfig, SyntheticConfig
from runner.data import synthetic
from tests.warm_cli import run_cli

# the real ImageNet sample (val/*.JPEG + val_label.txt), where the machine has one: set by
# scripts/test.sh when it finds it; tests that need it skip without it
SAMPLE_ROOT = Path(os.environ.get("RUNNER_SAMPLE_DIR") or "/nonexistent/RUNNER_SAMPLE_DIR")
needs_sample = pytest.mark.skipif(
    not (SAMPLE_ROOT / "val_label.txt").is_file(),
    reason="real ImageNet sample not found: set RUNNER_SAMPLE_DIR to a folder holding "
           "val/*.JPEG and val_label.txt",
)

config.register()


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def run_config(*overrides: str) -> RunConfig:
    return config.validate(compose_config(*overrides))


@pytest.fixture(scope="session")
def generated_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset of generated JPEGs in the guides' layout (one grayscale image)."""
    root = tmp_path_factory.mktemp("generated") / "dataset"
    synthetic.generate(root, "val", "val_label.txt", SyntheticConfig(num_images=20, seed=3))
    return root


class Workspace:
    """A cache folder, an MLflow store and a runs folder, shared by the CLI runs of a test."""

    def __init__(self, root: Path, template: Path | None = None) -> None:
        self.root = root
        self.cache = root / "cache"
        self.db = root / "mlflow.db"
        self.tracking_uri = f"sqlite:///{self.db}"
        # an empty MLflow store, its tables made once a session (mlflow_store_template): each
        # new store's schema migrations cost ~2 s of every test's first run otherwise. None: the
        # runner creates the store itself, for tests about exactly that
        self.template = template

    def overrides(self) -> list[str]:
        return [
            f"paths.cache_dir={self.cache}",
            f"mlflow.tracking_uri={self.tracking_uri}",
            f"mlflow.artifact_location={self.root / 'mlruns'}",
            f"hydra.run.dir={self.root}/runs/${{now:%H-%M-%S-%f}}",
            f"hydra.sweep.dir={self.root}/multirun/${{now:%H-%M-%S-%f}}",
        ]

    def run(self, *args: str, check: bool = True, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        if self.template is not None and not self.db.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.template, self.db)
        # `python -m runner`, started warm (tests/warm_cli.py)
        result = run_cli([*args, *self.overrides()], cwd=PROJECT_ROOT, timeout=timeout,
                         env={**os.environ, **(env or {})})
        if check and result.returncode != 0:
            raise AssertionError(
                f"runner exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\n"
                f"stderr:\n{result.stderr[-4000:]}"
            )
        return result

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def record(self, run) -> dict:
        """The run's run.json: its environment and each stage's cache key and hit or miss."""
        from runner.tracking import run_record

        return run_record(self.tracking_uri, run.info.run_id)

    def entry(self, stage: str, run) -> Path:
        """The cache entry of `stage` that `run` used."""
        return self.cache / stage / self.record(run)["stages"][stage]["key"]

    def cache_states(self, run) -> dict[str, str]:
        """Stage -> "hit" or "miss" for `run`."""
        return {name: s["cache"] for name, s in self.record(run)["stages"].items()}

    def runs(self) -> list:
        client = self.client()
        experiment = client.get_experiment_by_name("runner")
        if experiment is None:
            return []
        return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])


@pytest.fixture(scope="session")
def shared_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """One cache for the session's CLI tests, so the AlexNet export is made once."""
    return Workspace(tmp_path_factory.mktemp("workspace"))


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, empty MLflow SQLite store, made by MLflow itself (tables and the Default
    experiment); copied to be each test's fresh store."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def workspace(tmp_path: Path, shared_workspace: Workspace,
              mlflow_store_template: Path) -> Iterator[Workspace]:
    """A fresh MLflow store and runs folder, reusing the session's stage cache."""
    space = Workspace(tmp_path, template=mlflow_store_template)
    space.cache = shared_workspace.cache
    yield space


# the benchmark cut short (conf/debug/quick_benchmark.yaml): tests check how figures are made
# and recorded, never what they are
FAST_BENCHMARK = ("debug=quick_benchmark",)


@pytest.fixture
def fast_benchmark() -> tuple[str, ...]:
    return FAST_BENCHMARK


Runner = Callable[..., subprocess.CompletedProcess[str]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with the most whole-pipeline (slow) tests first, each file's tests in their own
    order: pytest-xdist's --dist loadfile hands out files in this order, so the long ones start
    while the short ones fill the gaps, rather than one long file running alone at the end
    (collection order is alphabetical: test_sweep.py, among the longest, came last but three)."""
    slow_in_file = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_in_file[item.path])  # a stable sort: file order is kept
