"""The CLI for tests, started warm: `python -m runner ARGS` run in a child forked from a server
that has imported the runner and its heavy dependencies once.

Why: a fresh `python -m runner` spends seconds importing torch, ONNX Runtime, MLflow, Hydra and
OpenCV before it reads its arguments, and the suite starts the CLI a few hundred times. Here each
pytest worker starts one server (`python -m tests.warm_cli`, the same interpreter and
PROJECT_ROOT as a fresh CLI) that imports those modules, then forks one child per run. The child
is the CLI as users start it, less the imports: its own cwd, environment, argv, stdout and stderr
files and exit status; `runner/__main__.py` runs as `__main__`, and the interpreter's exit (its
non-daemon threads joined, then atexit) is done by hand before `os._exit`. What a fork cannot
give stays on real subprocesses: tests that signal the process or read its output while it runs
use subprocess themselves. RUNNER_TEST_FRESH_CLI=1 runs every CLI call as a fresh subprocess
instead (to check that nothing depends on the warm start); RUNNER_TEST_CLI_LOG=FILE appends
seconds, test and argv per call.

Protocol (one request at a time, on the server's stdin/stdout): a JSON line {argv, cwd, env,
stdout, stderr} -> a JSON line {"pid"} once forked, then {"status"} when the child has exited.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# imported once by the server: what every CLI run would import first (import order as the CLI's)
PRELOAD = ("runner.cli", "runner.pipeline", "runner.tracking", "runner.compare", "mlflow",
           "mlflow.tracking", "hydra", "omegaconf", "numpy", "cv2", "PIL.Image", "onnx",
           "onnxruntime", "torch", "torchvision")


# -- the server, in its own process --

def _preload() -> None:
    import importlib
    import pkgutil

    for name in PRELOAD:
        importlib.import_module(name)
    import runner.stages  # every stage module, as a run's plan imports them

    for module in pkgutil.iter_modules(runner.stages.__path__, "runner.stages."):
        importlib.import_module(module.name)


def _child(request: dict[str, Any], channel: list[int]) -> None:
    """Become the CLI process of `request`; never returns."""
    code = 1
    try:
        for fd in channel:
            os.close(fd)
        os.chdir(request["cwd"])
        started_with = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        os.environ.clear()
        os.environ.update(request["env"])
        # PYTHONPATH is read when an interpreter starts: a fresh one puts its entries after
        # sys.path[0]; so does the child, for the entries the server did not start with
        added = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                 if p and p not in started_with]
        sys.path[1:1] = added
        stdin = os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, fd)
            os.close(out)
        # the server's default signal dispositions, as a fresh process has them
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        sys.argv = [str(PROJECT_ROOT / "runner" / "__main__.py"), *request["argv"]]
        try:
            runpy.run_module("runner", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            code = _exit_code(exit_.code)
        except KeyboardInterrupt:
            traceback.print_exc()
            code = 128 + signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
        with contextlib.suppress(BaseException):
            threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # SystemExit("message"): the interpreter prints it, exits 1
    return 1


def serve() -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    requests = os.fdopen(os.dup(0), "r")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # anything the imports print goes to the server's stderr
    _preload()
    reply.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in requests:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, [reply.fileno(), requests.fileno()])
        reply.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        reply.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")


# -- the client, in the pytest process --

class _Server:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.warm_cli"], cwd=PROJECT_ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._read(timeout=300)

    def _read(self, timeout: float | None) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the warm CLI server exited ({self.process.wait()})")
        return json.loads(line)

    def run(self, request: dict[str, Any], timeout: float) -> int:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        pid = self._read(timeout=60)["pid"]
        try:
            return self._read(timeout=timeout)["status"]
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._read(timeout=60)
            raise

    def alive(self) -> bool:
        return self.process.poll() is None


_server: _Server | None = None


def run_cli(args: list[str], cwd: Path | str = PROJECT_ROOT, env: dict[str, str] | None = None,
            timeout: float = 600, fresh: bool | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """`python -m runner *args` with `env` (default: this process's), captured like
    subprocess.run(capture_output=True, text=True); TimeoutExpired past `timeout`. `fresh`: a
    fresh subprocess instead of the warm server (default: RUNNER_TEST_FRESH_CLI=1)."""
    global _server
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    command = [sys.executable, "-m", "runner", *args]
    started = time.monotonic()
    if fresh is None:
        fresh = os.environ.get("RUNNER_TEST_FRESH_CLI") == "1"
    if fresh:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=timeout)
    else:
        if _server is None or not _server.alive():
            _server = _Server()
        with tempfile.TemporaryDirectory(prefix="warm-cli-") as folder:
            out, err = Path(folder, "stdout"), Path(folder, "stderr")
            request = {"argv": list(args), "cwd": str(cwd), "env": env, "stdout": str(out),
                       "stderr": str(err)}
            try:
                status = _server.run(request, timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired(command, timeout, out.read_text(),
                                                err.read_text()) from None
            result = subprocess.CompletedProcess(command, status, out.read_text(),
                                                 err.read_text())
    log = os.environ.get("RUNNER_TEST_CLI_LOG")
    if log:
        with open(log, "a") as file:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            file.write(f"{time.monotonic() - started:.2f}\t{test}\t{' '.join(args)}\n")
    return result


if __name__ == "__main__":
    serve()
