"""Bad inputs through `python -m runner`: one line `runner: error: ...` naming the culprit and the
fix, no traceback (unless traceback=true), exit status 1, and a FAILED MLflow run where one had
started. Each case is a real CLI process against a real MLflow store (SQLite, or a real
`mlflow server` for the tracking-server cases). A CLI process costs seconds, so there is one per
kind of failure; every row of the issue's matrix is checked where it is raised, in
test_errors_inputs.py."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from PIL import Image

from tests.conftest import Workspace
from tests.test_errors_inputs import _RunsCode

pytestmark = pytest.mark.slow

SQUEEZE = ("model.arch=torchvision.models.squeezenet1_1", "stage.stages=[export]",
           "model.weights_checksum=null")


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """One cache and MLflow store for the matrix (creating a store costs seconds)."""
    return Workspace(tmp_path_factory.mktemp("errors"))


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout
    lines = [x for x in result.stderr.splitlines() if x.startswith("runner: error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0].removeprefix("runner: error: ")


def _fails(space: Workspace, *args: str, expected: str, run_started: bool,
           env: dict[str, str] | None = None) -> str:
    """Run the CLI, check the one-line error and the MLflow run; the error line."""
    before = len(space.runs())
    result = space.run(*args, check=False, timeout=300, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    line = _error_line(result)
    assert re.search(expected, line), line
    runs = space.runs()
    if run_started:
        assert len(runs) == before + 1
        assert runs[-1].info.status == "FAILED"
        reason = runs[-1].data.tags["error"].split(": ", 1)[1]  # "<type>: <message>"
        assert reason[:100] in line
    else:
        assert len(runs) == before
    return line


# --- errors while composing the config: no MLflow run starts ---------------------------------


@pytest.mark.parametrize(("override", "expected"), [
    ("model=nosuchnet", r"^model=nosuchnet is not a known model: choose one of alexnet"),
    ("bs=abc", r"^Error merging override bs=abc: Value 'abc' of type 'str' could not be "
               r"converted to Integer"),
])
def test_config_errors_are_one_line_and_start_no_run(space: Workspace, override: str,
                                                     expected: str) -> None:
    _fails(space, "model.weights=random", override, expected=expected, run_started=False)


def test_debug_true_shows_the_traceback(space: Workspace) -> None:
    result = space.run("model=nosuchnet", "traceback=true", check=False)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "MissingConfigException" in result.stderr


# --- errors during the run: the MLflow run ends FAILED ------------------------------------------


def _images(root: Path, names: list[str]) -> None:
    (root / "val").mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.new("RGB", (64, 48), (index * 40 % 256, 90, 160)).save(root / "val" / name, "JPEG")


def _labels(root: Path, text: str) -> list[str]:
    (root / "val_label.txt").write_text(text)
    return [f"dataset.root={root}", "stage.stages=[preprocess]", "preprocess.workers=1"]


def _malformed(root: Path) -> list[str]:
    _images(root, ["a.JPEG", "b.JPEG"])
    return _labels(root, "a.JPEG 1\nb.JPEG 2 extra\n")


def _truncated_jpeg(root: Path) -> list[str]:
    _images(root, ["a.JPEG", "b.JPEG", "c.JPEG"])
    data = (root / "val" / "b.JPEG").read_bytes()
    (root / "val" / "b.JPEG").write_bytes(data[: len(data) // 2])
    return _labels(root, "a.JPEG 1\nb.JPEG 2\nc.JPEG 3\n")


def _checkpoint(root: Path, state: object, **kwargs: str) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    torch.save(state, root / "w.pth")
    return [*SQUEEZE, f"model.weights={root / 'w.pth'}",
            *(f"model.{k}={v}" for k, v in kwargs.items())]


def _runs_code(root: Path) -> list[str]:
    return _checkpoint(root, {"x": _RunsCode(root / "pwned")})


# one row per kind of failure; every row of the issue is checked where it is raised, in
# test_errors_inputs.py: the CLI handles them all alike
# (the last field: whether a run started: a label file is read by the plan, before any run)
RUN_ROWS: list[tuple[str, Callable[[Path], list[str]], str, bool]] = [
    ("malformed label line", _malformed, r"val_label.txt:2: expected '<file name> <class id>'",
     False),
    ("truncated jpeg, in a worker process", _truncated_jpeg,
     r"image .*/val/b.JPEG cannot be decoded", True),
    ("pickle that runs code", _runs_code, r"refused by the safe loader \(weights_only=True\)",
     True),
]


@pytest.mark.parametrize(("make", "expected", "run_started"), [r[1:] for r in RUN_ROWS],
                         ids=[r[0] for r in RUN_ROWS])
def test_bad_input_fails_the_run_with_one_line(space: Workspace, tmp_path: Path,
                                               make: Callable[[Path], list[str]],
                                               expected: str, run_started: bool) -> None:
    args = make(tmp_path / "input")
    _fails(space, "model.weights=random", *args, expected=expected, run_started=run_started)
    assert not (tmp_path / "input" / "pwned").exists()


def test_corrupt_onnx_and_unexpected_errors(space: Workspace, tmp_path: Path) -> None:
    private = Workspace(tmp_path)  # its cache entries get damaged below
    private.db, private.tracking_uri = space.db, space.tracking_uri
    private.run(*SQUEEZE, "model.weights=random")
    (export_entry,) = [p for p in (private.cache / "export").iterdir() if p.is_dir()]
    onnx_path = export_entry / "model.onnx"
    # damage of the same size passes the size-only check; the ONNX checker names the file
    onnx_path.write_bytes(b"\x08\x07garbage".ljust(onnx_path.stat().st_size, b"\0"))
    convert = ("model.arch=torchvision.models.squeezenet1_1", "stage.stages=[export,convert]",
               "model.weights=random")
    _fails(private, *convert, "cache.verify=size", expected=r"ONNX file .*/model.onnx is corrupt "
           r"or not an ONNX model .*rerun with cache.force=\[export\]", run_started=True)
    # the default check sees its changed stat, finds it by its digest, and makes it again
    fixed = private.run(*convert)
    assert re.search(r"export cache entry .* is damaged: .*model.onnx does not have the sha256 "
                     r"recorded when it was written \(its size is the same, its modification "
                     r"time is not\)", fixed.stdout + fixed.stderr)
    # a damaged result.json: named and recomputed, not an unexpected JSONDecodeError
    (export_entry / "result.json").write_text('{"artifacts": ')
    again = private.run(*convert)
    assert re.search(r"result.json is damaged or unreadable", again.stdout + again.stderr)
    assert private.cache_states(private.runs()[-1])["export"] == "miss"
    # an error nobody foresaw (here: a trusted architecture that divides by zero)
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("")
    (tmp_path / "brokenpkg" / "models.py").write_text("def net(**kwargs):\n    return 1 / 0\n")
    unexpected = ("model.arch=brokenpkg.models.net", "security.extra_arch_prefixes=[brokenpkg]",
                  "stage.stages=[export]", "model.weights=random")
    env = {"PYTHONPATH": str(tmp_path)}
    _fails(private, *unexpected, env=env, expected=r"^unexpected ZeroDivisionError: division by "
           r"zero \(rerun with traceback=true for the traceback\)$", run_started=True)
    failed = private.runs()[-1]
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=failed.info.run_id,
                                                         tracking_uri=private.tracking_uri))
    assert "ZeroDivisionError" in (artifacts / "logs" / "traceback.txt").read_text()
    debug = private.run(*unexpected, "traceback=true", check=False, env=env)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert private.runs()[-1].info.status == "FAILED"


# --- the tracking store --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_tracking_server_fails_fast_naming_it(space: Workspace) -> None:
    port = _free_port()
    unreachable = Workspace(space.root / "unreachable")
    unreachable.tracking_uri = f"http://alice:pw-4-mlflow-secret@127.0.0.1:{port}"
    result = unreachable.run("model.weights=random", "stage=performance", check=False,
                             timeout=120)
    assert result.returncode == 1
    line = _error_line(result)
    assert line.startswith(f"MLflow tracking server http://alice:***@127.0.0.1:{port} is "
                           "unreachable (")
    assert "mlflow.tracking_uri=sqlite:///" in line
    assert "pw-4-mlflow-secret" not in result.stderr + result.stdout


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1, with its own SQLite store."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_secrets_never_reach_the_tracking_server(tmp_path: Path, mlflow_server: str) -> None:
    """Credentials in a URL and secret environment variables are masked in everything logged;
    the run goes to a real tracking server (so its reachability probe is checked too)."""
    token = "tok-0123456789-secret"
    remote = Workspace(tmp_path / "remote")
    remote.tracking_uri = mlflow_server
    url = f"https://bob:{token}@127.0.0.1:{_free_port()}/alexnet-owt-4df8aa71.pth"
    env = {"RUNNER_TEST_API_TOKEN": token}
    # a damaged download in the weights cache: the URL is not probed (an unreachable one fails
    # before the run starts), the run starts and fails in export, logging what it has
    damaged = remote.cache / "weights" / "alexnet-owt-4df8aa71.pth"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a checkpoint")
    line = _fails(remote, "stage=performance", f"model.weights={url}",
                  "dataset.root=/data/${oc.env:RUNNER_TEST_API_TOKEN}/imagenet",
                  expected=r"alexnet-owt-4df8aa71.pth has md5 [0-9a-f]+, expected aed0662f",
                  run_started=True, env=env)
    assert token not in line
    (run,) = remote.runs()
    assert run.data.params["model.weights"].startswith("https://bob:***@127.0.0.1:")
    assert run.data.params["dataset.root"] == "/data/***/imagenet"
    logged = [*run.data.params.values(), *run.data.tags.values()]
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                         tracking_uri=mlflow_server))
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    assert {"config.yaml", "overrides.yaml", "traceback.txt", "runner.log"} <= {p.name
                                                                               for p in files}
    logged += [p.read_text() for p in files]
    assert not [text for text in logged if token in text]


# --- output folders ------------------------------------------------------------------------------


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(),
                                 reason="cannot mount a tmpfs in a user namespace here")


def _run_on_small_disk(space: Workspace, mount_options: str, args: list[str],
                       after: str) -> subprocess.CompletedProcess[str]:
    """The CLI with paths.cache_dir on a tmpfs of its own (a real full or read-only disk),
    then `after` (a shell command) inside the same mount namespace, before the tmpfs goes."""
    cache = space.root / "small-disk"
    cache.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "runner", *args, *space.overrides(),
               f"paths.cache_dir={cache}"]
    script = (f"mount -t tmpfs -o {mount_options} tmpfs {cache} && "
              f"{shlex.join(command)}; status=$?; {after}; exit $status")
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@needs_tmpfs
def test_disk_full_fails_the_run_and_keeps_only_complete_chunks(space: Workspace,
                                                                tmp_path: Path) -> None:
    root = tmp_path / "big"
    names = [f"img{i}.JPEG" for i in range(24)]
    _images(root, names)
    args = [*_labels(root, "".join(f"{n} {i}\n" for i, n in enumerate(names))),
            "preprocess.chunk_size=4", "model.weights=random"]
    # each chunk is 4 * 224 * 224 * 3 bytes (602 kB): a 2 MB disk takes 3 of the 6
    listing = ("find \"$0\" -type f -printf '%P %s\\n' | sort > " + str(tmp_path / "files.txt"))
    result = _run_on_small_disk(space, "size=2m", args, listing.replace(
        '"$0"', str(space.root / "small-disk")))
    assert result.returncode == 1, result.stderr[-3000:]
    line = _error_line(result)
    assert re.fullmatch(r"cannot write the preprocess cache entry in .*/small-disk/preprocess "
                        r"\(No space left on device\): free space there or pass "
                        r"paths.cache_dir=/a/writable/folder; finished chunks are kept for the "
                        r"rerun", line), line
    assert space.runs()[-1].info.status == "FAILED"
    files = dict(row.rsplit(" ", 1) for row in (tmp_path / "files.txt").read_text().splitlines())
    chunks = {name: int(size) for name, size in files.items()
              if "chunk_" in name and not name.rsplit("/", 1)[-1].startswith(".")}
    assert 1 <= len(chunks) < 6
    assert all(re.fullmatch(r"preprocess/\w+\.partial/chunk_\d{6}\.npy", n) for n in chunks)
    assert set(chunks.values()) == {4 * 224 * 224 * 3 + 128}  # complete .npy files only
    assert not [n for n in files if ".tmp-" in n or n.endswith("result.json")]
    # every kept chunk has the sidecar that lets the rerun check it before resuming from it
    assert all(n.replace("/chunk_", "/.chunk_") + ".sum" in files for n in chunks)


@needs_tmpfs
def test_read_only_cache_dir_fails_before_any_work(space: Workspace, tmp_path: Path) -> None:
    _images(tmp_path / "d", ["a.JPEG"])
    args = [*_labels(tmp_path / "d", "a.JPEG 1\n"), "model.weights=random"]
    before = len(space.runs())
    result = _run_on_small_disk(space, "ro,size=1m", args, "true")
    assert result.returncode == 1
    assert re.fullmatch(r"paths.cache_dir=.*/small-disk is not writable \(Read-only file "
                        r"system\): pass paths.cache_dir=/a/writable/folder", _error_line(result))
    assert len(space.runs()) == before
