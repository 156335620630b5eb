"""Hostile input and crashes through `python -m runner` (issue 16): a damaged cache entry is named
and recomputed, never used; a URL password reaches no surface; a FIFO among the images and a
full disk neither hang nor leave anything behind; the remaining unclear messages are one line
naming the file or key. Real CLI processes, a real MLflow SQLite store, real files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Workspace
from tests.test_errors_cli import _error_line, _fails, _run_on_small_disk, needs_tmpfs
from tests.warm_cli import run_cli

pytestmark = pytest.mark.slow

SMALL = ("model.arch=torchvision.models.squeezenet1_1", "model.weights=random",
         "model.weights_checksum=null", "dataset=synthetic", "dataset.synthetic.num_images=8",
         "preprocess.chunk_size=4")


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("hostile"))


def test_a_damaged_preprocess_entry_is_named_and_recomputed(space: Workspace) -> None:
    """The issue's case: crops inverted in place in a finished chunk (same size), then a run at
    another bs. Parity cannot see it (PyTorch would read the same crops); the digest does."""
    space.run("stage=accuracy", "bs=4", *SMALL)
    first = space.runs()[-1]
    entry = space.entry("preprocess", first)
    crops = np.load(entry / "chunk_000000.npy", mmap_mode="r+")
    crops[:] = 255 - crops
    crops.flush()
    result = space.run("stage=accuracy", "bs=2", "cache.verify=full", *SMALL)
    assert re.search(r"the preprocess cache entry .* is damaged: .*/chunk_000000.npy does not "
                     r"have the sha256 recorded when it was written; computing it again",
                     result.stdout + result.stderr)
    second = space.runs()[-1]
    assert second.info.status == "FINISHED"
    assert space.cache_states(second)["preprocess"] == "miss"
    assert second.data.metrics["top1"] == first.data.metrics["top1"]
    assert np.load(entry / "chunk_000000.npy").tolist() != crops.tolist()


def test_a_url_password_reaches_no_surface(space: Workspace) -> None:
    password = "Pa55-hostile-9q"
    url = f"https://bob:{password}@127.0.0.1/alexnet-owt-4df8aa71.pth"  # no port: urllib's trap
    run_dir = space.root / "runs-secret"
    result = space.run("stage.stages=[export]", f"model.weights={url}",
                       f"hydra.run.dir={run_dir}", check=False)
    assert result.returncode == 1
    # the URL is probed before any work (no MLflow run): its error names it, masked
    assert re.search(r"cannot reach model.weights=https://bob:\*\*\*@127.0.0.1/",
                     _error_line(result))
    assert password not in result.stdout + result.stderr
    # Hydra's run folders (the workspace names them): the command line's files, masked
    files = [p for p in [*run_dir.rglob("*"), *(space.root / "runs").rglob("*")] if p.is_file()]
    assert {"overrides.yaml", "hydra.yaml", "config.yaml"} <= {p.name for p in files}
    assert [p for p in files if password in p.read_text(errors="replace")] == []


def test_a_secret_experiment_name_is_refused(space: Workspace) -> None:
    _fails(space, "stage.stages=[export]", *SMALL[:3],
           "mlflow.experiment=${oc.env:RUNNER_HOSTILE_TOKEN}",
           env={"RUNNER_HOSTILE_TOKEN": "tok-very-secret-42"},
           expected=r"^mlflow.experiment holds a secret .*: name the experiment without it$",
           run_started=False)
    names = [e.name for e in space.client().search_experiments()]
    assert "tok-very-secret-42" not in names


def test_a_fifo_among_the_images_fails_at_once(space: Workspace, tmp_path: Path) -> None:
    """Opening a FIFO blocks forever (SIGTERM ignored for 10 minutes in the issue)."""
    root = tmp_path / "data"
    space.run("stage.stages=[preprocess]", *SMALL[:3], "dataset=synthetic",
              f"dataset.root={root}", "dataset.synthetic.num_images=4")
    name = sorted((root / "val").iterdir())[0].name
    (root / "val" / name).unlink()
    os.mkfifo(root / "val" / name)
    # as a dataset of the user's (a generated one is keyed by its settings, not re-listed):
    # the plan lists it, so the FIFO is refused before any run, never opened
    line = _fails(space, "stage.stages=[preprocess]", *SMALL[:3], "dataset=imagenet",
                  f"dataset.root={root}",
                  expected=rf"1 image entries are not regular files: .*/{name} \(a FIFO\)",
                  run_started=False)
    assert "remove them and their lines in the label file" in line


@needs_tmpfs
def test_a_full_disk_during_export_leaves_no_half_written_model(space: Workspace) -> None:
    # every file that takes space (the key's lock files are empty once released)
    listing = (f"find {space.root / 'small-disk'} -type f -size +0 | sort > "
               f"{space.root / 'files.txt'}")
    result = _run_on_small_disk(space, "size=5m", ["stage.stages=[export]", "model=alexnet",
                                                   "model.weights=random"], listing)
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(r"cannot write the export cache entry .*No space left on device",
                     _error_line(result))
    assert (space.root / "files.txt").read_text() == ""  # no half-written model.onnx


MESSAGES = [
    # id, setup (tmp_path -> extra overrides), expected error line, does an MLflow run start
    ("damaged mlflow.db", lambda t: _garbage_db(t),
     r"mlflow.tracking_uri=sqlite:///.*/bad.db: .*/bad.db cannot be opened as an SQLite "
     r"database \(file is not a database\): restore it", False),
    ("run dir under /proc", lambda t: ["hydra.run.dir=/proc/runner-hostile"],
     r"^cannot create the folder /proc/runner-hostile \(No such file or directory\): choose "
     r"another folder", False),
    ("artifacts under /proc", lambda t: ["mlflow.artifact_location=/proc/runner-hostile"],
     r"^mlflow.artifact_location=/proc/runner-hostile is not writable \(No such file or "
     r"directory\)", False),
    ("postgresql without driver", lambda t: ["mlflow.tracking_uri=postgresql://u:pw@127.0.0.1/x"],
     r"^mlflow.tracking_uri=postgresql://u:\*\*\*@127.0.0.1/x: the database driver cannot be "
     r"loaded \(No module named 'psycopg2?'\): install it", False),
    ("batch larger than memory", lambda t: ["bs=1000000", "stage=performance"],
     r"^bs=1000000: one input batch of 1000000x3x224x224 float32 is 602.1 GB, more than this "
     r"host's .* GB of memory; lower bs$", False),
    ("text file as checkpoint", lambda t: _text_checkpoint(t),
     r"^checkpoint .*/notes.pth cannot be read \(\w+: .*\): it may be truncated or not a "
     r"PyTorch checkpoint", True),
    ("cpu device beyond the cores", lambda t: [f"chip.devices=[{os.cpu_count()}]"],
     rf"^chip.devices=\[{os.cpu_count()}\]: on the CPU a device is a worker process", False),
]


def _text_checkpoint(tmp_path: Path) -> list[str]:
    (tmp_path / "notes.pth").write_text("hello world\n")
    return [f"model.weights={tmp_path / 'notes.pth'}", "model.weights_checksum=null"]


def _garbage_db(tmp_path: Path) -> list[str]:
    db = tmp_path / "bad.db"
    db.write_bytes(b"this is not an sqlite file at all\n" * 100)
    return [f"mlflow.tracking_uri=sqlite:///{db}"]


@pytest.mark.parametrize(("make", "expected", "run_started"), [m[1:] for m in MESSAGES],
                         ids=[m[0] for m in MESSAGES])
def test_unclear_errors_name_the_file_or_key(space: Workspace, tmp_path: Path, make,
                                             expected: str, run_started: bool) -> None:
    own = make(tmp_path)
    keys = {arg.split("=", 1)[0] for arg in own}
    # the workspace's store and folders, except those the case replaces
    defaults = [arg for arg in space.overrides() if arg.split("=", 1)[0] not in keys]
    result = run_cli([*SMALL[:3], "stage.stages=[export]", *defaults, *own], timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(expected, _error_line(result)), _error_line(result)
    if run_started:  # only the cases that keep the workspace's store
        assert space.runs()[-1].info.status == "FAILED"


def test_cfg_job_of_an_invalid_config_exits_1() -> None:
    result = run_cli(["--cfg", "job", "bs=0"], timeout=120)
    assert result.returncode == 1
    assert _error_line(result) == "bs=0 must be a positive integer, e.g. bs=16"
    assert "bs: 0" in result.stdout  # the config is printed all the same
