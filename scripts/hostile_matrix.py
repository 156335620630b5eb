"""The hostile matrix of issue 16: bad input, crashes and races through `python -m runner`.

Each case runs real CLI processes against a real MLflow SQLite store in a scratch folder and
prints one line: PASS/FAIL, the case, exit code, run status, seconds, and the error line (or
what went wrong). The counts come last. A case passes when the runner behaves as
docs/errors-and-safety.md says: an error is one line `runner: error: ...` on stderr with
exit 1 and no traceback, a recoverable damage is a warning and a FINISHED run, no secret is in any
file or output, nothing hangs (every process has a time limit), no worker outlives a kill -9.

    .venv/bin/python scripts/hostile_matrix.py [--only SUBSTRING] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.config import SyntheticConfig  # noqa: E402
from runner.data import synthetic  # noqa: E402

BASE = ["model.arch=torchvision.models.squeezenet1_1", "model.weights=random",
        "model.weights_checksum=null", "preprocess.chunk_size=4"]
SECRET = "Zq-hostile-s3cret-77"  # every secret case uses it: no file may hold it afterwards
TIMEOUT_S = 300


@dataclass
class Outcome:
    rc: int | None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def error_lines(self) -> list[str]:
        return [x for x in self.stderr.splitlines() if x.startswith("runner: error: ")]

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Space:
    root: Path
    cache: Path = field(init=False)
    db: Path = field(init=False)

    def __post_init__(self) -> None:
        self.cache, self.db = self.root / "cache", self.root / "mlflow.db"

    def overrides(self) -> list[str]:
        return [f"paths.cache_dir={self.cache}", f"mlflow.tracking_uri=sqlite:///{self.db}",
                f"mlflow.artifact_location={self.root / 'mlruns'}",
                f"hydra.run.dir={self.root}/runs/${{now:%H-%M-%S-%f}}"]

    def command(self, args: list[str]) -> list[str]:
        own = {a.split("=", 1)[0] for a in args}
        defaults = [a for a in self.overrides() if a.split("=", 1)[0] not in own]
        return [sys.executable, "-m", "runner", *args, *defaults]

    def run(self, args: list[str], env: dict[str, str] | None = None,
            timeout: float = TIMEOUT_S, wrap: list[str] | None = None) -> Outcome:
        command = self.command(args)
        if wrap:
            command = [*wrap, " ".join(_quote(c) for c in command)]
        started = time.monotonic()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout, env={**os.environ, **(env or {})})
            return Outcome(done.returncode, done.stdout, done.stderr,
                           time.monotonic() - started)
        except subprocess.TimeoutExpired as expired:
            return Outcome(None, str(expired.stdout or ""), str(expired.stderr or ""),
                           time.monotonic() - started, timed_out=True)

    def last_status(self) -> str:
        if not self.db.exists():
            return "-"
        try:
            with sqlite3.connect(self.db) as db:
                row = db.execute("select status from runs order by start_time desc limit 1"
                                 ).fetchone()
        except sqlite3.Error:
            return "?"
        return row[0] if row else "-"

    def last_tags(self) -> dict[str, str]:
        with sqlite3.connect(self.db) as db:
            run = db.execute("select run_uuid from runs order by start_time desc limit 1"
                             ).fetchone()
            return dict(db.execute("select key, value from tags where run_uuid=?", run))


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def dataset(folder: Path, count: int = 8) -> Path:
    synthetic.generate(folder, "val", "val_label.txt", SyntheticConfig(num_images=count, seed=5))
    return folder


def data_args(folder: Path) -> list[str]:
    return [f"dataset.root={folder}", "dataset.name=hostile"]


def one_line_error(outcome: Outcome, *needles: str) -> str | None:
    """None when `outcome` is a clean one-line error containing `needles`, else what is wrong."""
    if outcome.timed_out:
        return "timed out"
    if outcome.rc != 1:
        return f"exit {outcome.rc}, expected 1: {outcome.stderr[-300:]!r}"
    if "Traceback" in outcome.text:
        return "a traceback was printed"
    if len(outcome.error_lines) != 1:
        return f"{len(outcome.error_lines)} error lines"
    line = outcome.error_lines[0]
    if line.startswith("runner: error: unexpected"):
        return "an unexpected error: " + line
    missing = [n for n in needles if n not in line]
    return f"the line lacks {missing}" if missing else None


def finished(outcome: Outcome, space: Space, *needles: str) -> str | None:
    if outcome.timed_out:
        return "timed out"
    if outcome.rc != 0:
        return f"exit {outcome.rc}: {outcome.error_lines or outcome.stderr[-300:]}"
    missing = [n for n in needles if n not in outcome.text]
    if missing:
        return f"the output lacks {missing}"
    return None if space.last_status() == "FINISHED" else f"run {space.last_status()}"


def secret_nowhere(space: Space, outcome: Outcome, secret: str = SECRET) -> str | None:
    if secret in outcome.text:
        return "the secret is in the output"
    for path in space.root.rglob("*"):
        if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
            return f"the secret is in {path.relative_to(space.root)}"
    return None


def first(*problems: str | None) -> str | None:
    return next((p for p in problems if p), None)


# --- the cases -------------------------------------------------------------------------------

Case = Callable[[Space, Path], tuple[Outcome, str | None]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(function: Case) -> Case:
        CASES[name] = function
        return function
    return register


def _damage_entry(space: Space, scratch: Path, stage: str, damage: Callable[[Path], None],
                  extra: list[str] | None = None, stages: str = "accuracy",
                  ) -> tuple[Outcome, Space]:
    """A private cache with a finished run, `damage` applied to its `stage` entry, then a run at
    another bs (so the damaged entry is read, not just skipped)."""
    private = Space(scratch / "private")
    private.root.mkdir()
    data = dataset(scratch / "data")
    first_run = private.run([*BASE, *data_args(data), f"stage={stages}", "bs=4"])
    assert first_run.rc == 0, first_run.stderr[-2000:]
    (entry,) = [p for p in (private.cache / stage).iterdir()
                if p.is_dir() and not p.name.endswith(".partial")]
    damage(entry)
    return private.run([*BASE, *data_args(data), f"stage={stages}", "bs=2", *(extra or [])]), \
        private


def _invert(path: Path) -> None:
    pixels = np.load(path, mmap_mode="r+")
    pixels[:] = 255 - pixels
    pixels.flush()


@case("1 inverted crops in a finished chunk, cache.verify=full")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    outcome, private = _damage_entry(space, scratch, "preprocess",
                                     lambda e: _invert(e / "chunk_000000.npy"),
                                     ["cache.verify=full"])
    return outcome, finished(outcome, private, "is damaged", "chunk_000000.npy")


@case("1 truncated chunk in a finished entry (default check)")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    outcome, private = _damage_entry(space, scratch, "preprocess",
                                     lambda e: os.truncate(e / "chunk_000001.npy", 1000))
    return outcome, finished(outcome, private, "chunk_000001.npy has 1000 bytes")


def _text_checkpoint(folder: Path) -> Path:
    path = folder / "notes.pth"
    path.write_text("just some notes\n")
    return path


@case("2 password in the weights URL (no port)")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    url = f"https://bob:{SECRET}@127.0.0.1/alexnet-owt-4df8aa71.pth"
    outcome = space.run(["stage.stages=[export]", f"model.weights={url}"])
    return outcome, first(one_line_error(outcome, "could not download"),
                          secret_nowhere(space, outcome))


@case("2 secret env var interpolated into mlflow.experiment")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    outcome = space.run([*BASE, "stage.stages=[export]",
                         "mlflow.experiment=${oc.env:HOSTILE_API_TOKEN}"],
                        env={"HOSTILE_API_TOKEN": SECRET})
    return outcome, first(one_line_error(outcome, "mlflow.experiment holds a secret"),
                          secret_nowhere(space, outcome))


def _kill_9_mid(space: Space, scratch: Path, args: list[str],
                ready: Callable[[subprocess.Popen[bytes]], bool]) -> tuple[Outcome, str | None]:
    """kill -9 the runner once `ready()`, check no child survives, then the identical rerun."""
    process = subprocess.Popen(space.command(args), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT_S
    while not ready(process):
        if process.poll() is not None or time.monotonic() > deadline:
            return Outcome(process.poll()), "the stage was never caught running"
        time.sleep(0.05)
    children = psutil.Process(process.pid).children(recursive=True)
    process.kill()
    process.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    for survivor in alive:
        survivor.kill()
    if alive:
        return Outcome(-9), f"{len(alive)} workers outlived the kill -9"
    rerun = space.run(args)
    return rerun, finished(rerun, space)


def _large_dataset(folder: Path, count: int) -> Path:
    (folder / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(
        folder / "val" / "img_1.JPEG", quality=90)
    names = [f"img_{i}.JPEG" for i in range(1, count + 1)]
    for name in names[1:]:
        shutil.copyfile(folder / "val" / "img_1.JPEG", folder / "val" / name)
    (folder / "val_label.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    return folder


@case("3 kill -9 mid-preprocess (2 decode workers), then the identical rerun")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    data = _large_dataset(scratch / "big", 48)
    args = [*BASE, *data_args(data), "stage.stages=[preprocess]", "preprocess.workers=2"]
    return _kill_9_mid(space, scratch, args,
                       lambda _: any(space.cache.glob("preprocess/*.partial/chunk_*.npy")))


@case("3 kill -9 mid-benchmark with chip.devices=[0,1]")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    args = [*BASE, "stage=performance", "chip.devices=[0,1]", "chip.threads=1",
            "benchmark.min_duration_s=15", "benchmark.warmup_min_s=0", "benchmark.max_trials=1"]
    marker: list[float] = []

    def device_workers_busy(process: subprocess.Popen[bytes]) -> bool:
        try:
            children = psutil.Process(process.pid).children(recursive=True)
            busy = [p for p in children if "spawn_main" in " ".join(p.cmdline())]
        except psutil.Error:
            return False
        if len(busy) >= 2:
            marker.append(time.monotonic())
        return bool(marker) and time.monotonic() - marker[0] > 3

    process_outcome = _kill_9_mid(space, scratch, args, device_workers_busy)
    return process_outcome


def _with_entry(folder: Path, name: str, make: Callable[[Path], None]) -> Path:
    data = dataset(folder)
    victim = sorted((data / "val").iterdir())[0]
    victim.unlink()
    make(data / "val" / victim.name)
    return data


for label, maker, needle in [
    ("4 FIFO as an image", lambda p: os.mkfifo(p), "(a FIFO)"),
    ("7 broken symlink as an image", lambda p: p.symlink_to(p.with_name("gone.JPEG")),
     "(a broken symlink)"),
    ("new: folder named like an image", lambda p: p.mkdir(), "(a folder)"),
    ("new: symlink to /dev/zero as an image", lambda p: p.symlink_to("/dev/zero"),
     "(a character device)"),
    ("new: symlink loop as an image", lambda p: p.symlink_to(p), "(a broken symlink)"),
    ("new: unix socket as an image",
     lambda p: socket.socket(socket.AF_UNIX).bind(str(p)), "(a socket)"),
]:
    def _entry_case(space: Space, scratch: Path, maker=maker, needle=needle
                    ) -> tuple[Outcome, str | None]:
        data = _with_entry(scratch / "data", "x", maker)
        outcome = space.run([*BASE, *data_args(data), "stage.stages=[preprocess]"], timeout=120)
        return outcome, one_line_error(outcome, "not regular files", needle)
    CASES[label] = _entry_case


def _image_case(make: Callable[[Path], None], *needles: str, ok: bool = False) -> Case:
    def run(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
        data = dataset(scratch / "data")
        make(sorted((data / "val").iterdir())[0])
        outcome = space.run([*BASE, *data_args(data), "stage.stages=[preprocess]"])
        if ok:
            return outcome, finished(outcome, space)
        return outcome, one_line_error(outcome, *needles)
    return run


def _save(size: tuple[int, int], fmt: str = "JPEG") -> Callable[[Path], None]:
    return lambda p: Image.new("RGB", size, (9, 99, 199)).save(p, fmt)


CASES["5 thin 1x8000 JPEG"] = _image_case(_save((1, 8000)), "1x8000", "aspect ratio 8000:1")
CASES["new: wide 8000x1 JPEG"] = _image_case(_save((8000, 1)), "8000x1")
CASES["new: empty image file"] = _image_case(lambda p: p.write_bytes(b""), "cannot be decoded")
CASES["new: HTML saved as .JPEG"] = _image_case(
    lambda p: p.write_text("<html>404</html>"), "cannot be decoded")
CASES["new: decompression bomb PNG header (30000x30000)"] = _image_case(
    lambda p: Image.new("1", (30000, 30000)).save(p, "PNG"), "cannot be decoded")
CASES["new: JPEG with trailing garbage"] = _image_case(
    lambda p: p.write_bytes(p.read_bytes() + b"\0garbage" * 100), ok=True)


@case("6 5 MB tmpfs as paths.cache_dir during export")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    disk = scratch / "small"
    disk.mkdir()
    listing = scratch / "left.txt"
    wrap = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
    inner = (f"mount -t tmpfs -o size=5m tmpfs {disk} && {{ CMD; }}; s=$?; "
             f"find {disk} -type f -size +0 > {listing}; exit $s")
    command = " ".join(_quote(c) for c in space.command(
        ["stage.stages=[export]", "model=alexnet", "model.weights=random",
         f"paths.cache_dir={disk}"]))
    started = time.monotonic()
    done = subprocess.run([*wrap, inner.replace("CMD", command)], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    outcome = Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
    left = listing.read_text().split() if listing.exists() else ["(no listing)"]
    return outcome, first(one_line_error(outcome, "No space left on device"),
                          f"left behind: {left}" if left else None)


@case("7 text file as checkpoint, weights_checksum=null")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    path = _text_checkpoint(scratch)
    outcome = space.run([*BASE, "stage.stages=[export]", f"model.weights={path}"])
    return outcome, one_line_error(outcome, str(path), "not a PyTorch checkpoint")


@case("7 damaged result.json of a finished entry")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    outcome, private = _damage_entry(space, scratch, "export",
                                     lambda e: (e / "result.json").write_text('{"artif'))
    return outcome, finished(outcome, private, "result.json is damaged")


@case("7 truncated logits chunk of a finished infer entry")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    def truncate(entry: Path) -> None:
        os.truncate(sorted(entry.rglob("*.npy"))[0], 100)

    data = dataset(scratch / "data")
    private = Space(scratch / "private")
    private.root.mkdir()
    args = [*BASE, *data_args(data), "stage=accuracy", "bs=4"]
    assert private.run(args).rc == 0
    (entry,) = [p for p in (private.cache / "infer").iterdir() if p.is_dir()]
    truncate(entry)
    outcome = private.run(args)
    return outcome, finished(outcome, private, "has 100 bytes where")


@case("7 full artifact disk (4 KB tmpfs as mlflow.artifact_location)")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    disk = scratch / "artifacts"
    disk.mkdir()
    command = " ".join(_quote(c) for c in space.command(
        [*BASE, "stage.stages=[export]", f"mlflow.artifact_location={disk}",
         "mlflow.experiment=tiny-artifacts"]))
    started = time.monotonic()
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           f"mount -t tmpfs -o size=4k tmpfs {disk} && {command}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    outcome = Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
    return outcome, one_line_error(outcome, "No space left on device")


def _simple_error(args: list[str], *needles: str, env: dict[str, str] | None = None,
                  secret: bool = False) -> Case:
    def run(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
        resolved = [a.replace("{scratch}", str(scratch)) for a in args]
        outcome = space.run(resolved, env=env)
        return outcome, first(one_line_error(outcome, *needles),
                              secret_nowhere(space, outcome) if secret else None)
    return run


def _prepare(make: Callable[[Path], None], args: list[str], *needles: str) -> Case:
    def run(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
        make(scratch)
        return _simple_error(args, *needles)(space, scratch)
    return run


CASES["7 corrupted mlflow.db"] = _prepare(
    lambda s: (s / "bad.db").write_bytes(b"garbage" * 1000),
    [*BASE, "stage.stages=[export]", "mlflow.tracking_uri=sqlite:///{scratch}/bad.db"],
    "bad.db cannot be opened as an SQLite database")
CASES["7 hydra.run.dir under /proc"] = _simple_error(
    [*BASE, "stage.stages=[export]", "hydra.run.dir=/proc/hostile-run"], "/proc/hostile-run")
CASES["7 mlflow.artifact_location under /proc"] = _simple_error(
    [*BASE, "stage.stages=[export]", "mlflow.artifact_location=/proc/hostile-art",
     "mlflow.experiment=proc-artifacts"], "mlflow.artifact_location=/proc/hostile-art")


@case("7 own local checkpoint with the guide's default checksum")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    import torchvision

    path = scratch / "mine.pth"
    torch.save(torchvision.models.alexnet().state_dict(), path)
    outcome = space.run(["model=alexnet", "stage.stages=[export]", f"model.weights={path}"])
    return outcome, one_line_error(outcome, "if it is your own checkpoint, pass "
                                   "model.weights_checksum=md5:")


CASES["7 a folder as model.weights"] = _simple_error(
    [*BASE[:1], "model.weights_checksum=null", "stage.stages=[export]",
     "model.weights={scratch}"], "is a folder, not a checkpoint file")


@case("7 UTF-8 BOM in the label file")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    data = dataset(scratch / "data")
    labels = data / "val_label.txt"
    labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())
    outcome = space.run([*BASE, *data_args(data), "stage.stages=[preprocess]"])
    return outcome, finished(outcome, space)


CASES["7 bs=1000000 stage=performance"] = _simple_error(
    [*BASE, "bs=1000000", "stage=performance"], "bs=1000000", "lower bs")
CASES["7 postgresql:// store without its driver"] = _simple_error(
    [*BASE, "stage.stages=[export]", f"mlflow.tracking_uri=postgresql://u:{SECRET}@127.0.0.1/db"],
    "database driver cannot be loaded", secret=True)


@case("7 a whole pickled model as checkpoint")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    import torchvision

    path = scratch / "whole.pth"
    torch.save(torchvision.models.squeezenet1_1(), path)
    outcome = space.run([*BASE[:1], "model.weights_checksum=null", "stage.stages=[export]",
                         f"model.weights={path}"])
    problem = one_line_error(outcome, "Unsupported global", "state_dict()")
    return outcome, problem or ("ANSI codes in the line" if "\x1b" in outcome.stderr else None)


@case("7 --cfg job bs=0")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "runner", "--cfg", "job", "bs=0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    outcome = Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
    return outcome, one_line_error(outcome, "bs=0 must be a positive integer")


CASES["7 chip.devices=[5] on the CPU"] = _simple_error(
    [*BASE, "stage.stages=[export]", f"chip.devices=[{(os.cpu_count() or 1) + 3}]"],
    "on the CPU a device is a worker process")

# --- more invented cases ---------------------------------------------------------------------

CASES["new: label file is a FIFO"] = _prepare(
    lambda s: (dataset(s / "data"), (s / "data" / "val_label.txt").unlink(),
               os.mkfifo(s / "data" / "val_label.txt")),
    [*BASE, "dataset.root={scratch}/data", "stage.stages=[preprocess]"],
    "val_label.txt is not a file")
CASES["new: label file is a folder"] = _prepare(
    lambda s: (dataset(s / "data"), (s / "data" / "val_label.txt").unlink(),
               (s / "data" / "val_label.txt").mkdir()),
    [*BASE, "dataset.root={scratch}/data", "stage.stages=[preprocess]"],
    "val_label.txt is not a file")
CASES["new: dataset.root is a file"] = _prepare(
    lambda s: (s / "afile").write_text("x"),
    [*BASE, "dataset.root={scratch}/afile", "stage.stages=[preprocess]"], "does not exist")
CASES["new: /dev/zero as model.weights"] = _simple_error(
    [*BASE[:1], "model.weights_checksum=null", "stage.stages=[export]",
     "model.weights=/dev/zero"], "/dev/zero is not a regular file")
CASES["new: percent-encoded password with @ and / in the weights URL"] = _simple_error(
    [*BASE[:1], "stage.stages=[export]",
     f"model.weights=https://bob:{SECRET}%40x%2Fy@127.0.0.1:1/alexnet-owt-4df8aa71.pth"],
    "could not download", secret=True)
CASES["new: password in a URL with an invalid port"] = _simple_error(
    [*BASE[:1], "stage.stages=[export]",
     f"model.weights=https://bob:{SECRET}@127.0.0.1:99999/alexnet-owt-4df8aa71.pth"],
    "could not download", secret=True)
CASES["new: password in an unreachable tracking server URI"] = _simple_error(
    [*BASE, "stage.stages=[export]", f"mlflow.tracking_uri=http://u:{SECRET}@127.0.0.1:1"],
    "is unreachable", secret=True)
CASES["new: secret env var in dataset.root"] = _simple_error(
    [*BASE, "stage.stages=[preprocess]", "dataset.root=/nonexistent/${oc.env:HOSTILE_TOKEN}"],
    "does not exist", env={"HOSTILE_TOKEN": SECRET}, secret=True)


@case("new: secret env var in a label file name, a run that succeeds")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    private = Space(scratch / "private")  # its own store: only this run's records are scanned
    private.root.mkdir()
    outcome = private.run([*BASE, "stage.stages=[preprocess]", "dataset=synthetic",
                           "dataset.synthetic.num_images=8",
                           "dataset.labels=${oc.env:HOSTILE_SECRET}.txt"],
                          env={"HOSTILE_SECRET": SECRET})
    # the secret names the generated label file (its name, in the cache): no file holds it
    return outcome, first(finished(outcome, private), secret_nowhere(private, outcome))
CASES["new: paths.cache_dir is a file"] = _prepare(
    lambda s: (s / "cachefile").write_text("x"),
    [*BASE, "stage.stages=[export]", "paths.cache_dir={scratch}/cachefile"],
    "paths.cache_dir=")
CASES["new: mlflow.db is a folder"] = _prepare(
    lambda s: (s / "db.db").mkdir(),
    [*BASE, "stage.stages=[export]", "mlflow.tracking_uri=sqlite:///{scratch}/db.db"],
    "db.db")
CASES["new: hydra.run.dir is a file"] = _prepare(
    lambda s: (s / "runfile").write_text("x"),
    [*BASE, "stage.stages=[export]", "hydra.run.dir={scratch}/runfile"], "runfile")


@case("new: finished chunk replaced by a folder")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    def swap(entry: Path) -> None:
        (entry / "chunk_000000.npy").unlink()
        (entry / "chunk_000000.npy").mkdir()

    outcome, private = _damage_entry(space, scratch, "preprocess", swap)
    return outcome, finished(outcome, private, "is damaged")


@case("new: manifest.json edited (a small file, default check)")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    def edit(entry: Path) -> None:
        manifest = json.loads((entry / "manifest.json").read_text())
        manifest["labels"] = manifest["labels"][::-1]
        (entry / "manifest.json").write_text(json.dumps(manifest))

    outcome, private = _damage_entry(space, scratch, "preprocess", edit)
    return outcome, finished(outcome, private, "manifest.json does not have the sha256")


@case("new: result.json deleted from a finished entry")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    outcome, private = _damage_entry(space, scratch, "export",
                                     lambda e: (e / "result.json").unlink())
    return outcome, finished(outcome, private, "result.json is damaged")


@case("new: damaged chunk inside a partial folder is not resumed")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    data = dataset(scratch / "data")
    private = Space(scratch / "private")
    private.root.mkdir()
    args = [*BASE, *data_args(data), "stage.stages=[preprocess]"]
    assert private.run(args).rc == 0
    (entry,) = [p for p in (private.cache / "preprocess").iterdir() if p.is_dir()]
    partial = entry.with_name(entry.name + ".partial")
    entry.rename(partial)  # as if killed before the rename: a partial folder with its chunks
    (partial / "result.json").unlink()
    for sidecar_chunk in sorted(partial.glob("chunk_*.npy"))[:1]:
        os.truncate(sidecar_chunk, 500)  # seal gone from the entry: it is the file that lies
        (partial / f".{sidecar_chunk.name}.sum").write_text(
            json.dumps({"size": 602240, "sha256": "0" * 64}))
    outcome = private.run(args)
    return outcome, finished(outcome, private, "not resuming it")


@case("new: stale lock file naming a dead pid (no holder)")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    data = dataset(scratch / "data")
    private = Space(scratch / "private")
    private.root.mkdir()
    args = [*BASE, *data_args(data), "stage.stages=[preprocess]"]
    assert private.run(args).rc == 0
    (lock,) = list((private.cache / "preprocess").glob("*.lock"))
    lock.write_text(json.dumps({"pid": 999999, "host": socket.gethostname(), "started": 1.0}))
    outcome = private.run([*args, "cache.force=[preprocess]"], timeout=120)
    return outcome, finished(outcome, private)


@case("new: two identical runs at once sharing a cache")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    data = dataset(scratch / "data", 16)
    args = [*BASE, *data_args(data), "stage=accuracy", "bs=4"]
    processes = [subprocess.Popen(space.command(args), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=TIMEOUT_S) for p in processes]
    codes = [p.returncode for p in processes]
    outcome = Outcome(max(codes), *outputs[0])
    if codes != [0, 0]:
        return outcome, f"exit codes {codes}"
    with sqlite3.connect(space.db) as db:
        rows = db.execute("select m.value from metrics m join runs r on m.run_uuid=r.run_uuid "
                          "where m.key='top1' order by r.start_time desc limit 2").fetchall()
    return outcome, None if len({r[0] for r in rows}) == 1 else f"top1 differ: {rows}"


@case("new: SIGTERM mid-preprocess")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    data = _large_dataset(scratch / "big", 32)
    args = [*BASE, *data_args(data), "stage.stages=[preprocess]", "preprocess.workers=1"]
    process = subprocess.Popen(space.command(args), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while not any(space.cache.glob("preprocess/*.partial/chunk_*.npy")):
        if process.poll() is not None or time.monotonic() > deadline:
            return Outcome(process.poll()), "never caught mid-stage"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    outcome = Outcome(process.returncode, stdout, stderr)
    ok = process.returncode == 143 and "interrupted by SIGTERM" in stderr
    return outcome, None if ok and space.last_status() == "KILLED" else "not a clean KILLED"


@case("new: kill -9 mid-infer, then the identical rerun")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    data = dataset(scratch / "data", 64)
    args = [*BASE, *data_args(data), "stage=accuracy", "bs=1", "preprocess.chunk_size=64"]
    return _kill_9_mid(space, scratch, args,
                       lambda _: any(space.cache.glob("infer/*.partial/*/*.npy")))


@case("new: label file with CRLF line ends")
def _(space: Space, scratch: Path) -> tuple[Outcome, str | None]:
    data = dataset(scratch / "data")
    labels = data / "val_label.txt"
    labels.write_bytes(labels.read_bytes().replace(b"\n", b"\r\n"))
    outcome = space.run([*BASE, *data_args(data), "stage.stages=[preprocess]"])
    return outcome, finished(outcome, space)


CASES["new: bs=0 and stage order"] = _simple_error(
    [*BASE, "bs=0", "stage.stages=[infer,export]"], "bs=0 must be a positive integer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    options = parser.parse_args()
    scratch_root = Path(tempfile.mkdtemp(prefix="hostile-"))
    space = Space(scratch_root / "space")
    space.root.mkdir()
    counts = {"PASS": 0, "FAIL": 0}
    for index, (name, function) in enumerate(CASES.items()):
        if options.only not in name:
            continue
        scratch = scratch_root / f"case{index}"
        scratch.mkdir()
        started = time.monotonic()
        try:
            outcome, problem = function(space, scratch)
        except Exception as error:  # a broken case is a failure of the matrix, not a crash
            outcome, problem = Outcome(None), f"the case itself failed: {error!r}"[:300]
        verdict = "FAIL" if problem else "PASS"
        counts[verdict] += 1
        line = (outcome.error_lines or [""])[0].removeprefix("runner: error: ")
        shown = "timeout" if outcome.timed_out else outcome.rc
        print(f"{verdict} | {name} | exit {shown} | run {space.last_status()} | "
              f"{time.monotonic() - started:5.1f} s | {problem or line[:160]}", flush=True)
    print(f"\n{sum(counts.values())} cases: {counts['PASS']} pass, {counts['FAIL']} fail")
    if not options.keep:
        shutil.rmtree(scratch_root, ignore_errors=True)


if __name__ == "__main__":
    main()
