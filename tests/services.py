"""Real local services for the scale-out tests: a Ray head node and an MLflow tracking server,
both bound to 127.0.0.1 on free ports, each in its own process group that is killed on exit
(also when the test fails), so nothing outlives the test."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from runner.config import PROJECT_ROOT

LOOPBACK = "127.0.0.1"
BIN = Path(sys.executable).parent


# Ray turns --node-ip-address=127.0.0.1 into the host's routable address unless it is told the
# cluster is single-host (the switch it uses on laptops); the driver (the sweep) needs it too.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: the sockets stay bound until all are picked, so the kernel
    cannot hand out one port twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_range(size: int, avoid: set[int], tries: int = 200) -> int:
    """The first port of `size` consecutive free ports, none of them in `avoid`."""
    for _ in range(tries):
        first = free_port()
        span = range(first, first + size)
        if first + size <= 65536 and not avoid.intersection(span) and all(map(_bindable, span)):
            return first
    raise RuntimeError(f"no {size} consecutive free ports on {LOOPBACK} after {tries} tries")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _wait(ready: Callable[[], bool], process: subprocess.Popen, log: Path, what: str,
          timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


@contextmanager
def _process_group(command: list[str], log: Path,
                   env: dict[str, str]) -> Iterator[subprocess.Popen]:
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=PROJECT_ROOT, start_new_session=True)
    try:
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the process group, SIGKILL what is left after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            process.poll()  # reap the leader, or the group never looks empty
            if not _group_alive(process.pid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_mentioning(text: str) -> list[int]:
    """Ids of live processes whose command line contains `text` (e.g. a unique temp folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if text in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class RayHead:
    address: str  # what `ray.init(address=...)` connects to
    temp_dir: Path  # in every command line of the node's processes


@contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[RayHead]:
    """`ray start --head --block` on 127.0.0.1, stopped (all its processes) on exit."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Unix socket paths
    # Ray refuses to start when two of its components are given one port (CI once drew a
    # single port inside the worker range), so every port is distinct and outside the range.
    (port, dashboard, client_server, node_manager, object_manager, runtime_env_agent,
     agent_listen, agent_grpc, metrics_export) = singles = free_ports(9)
    worker_count = 51
    first_worker = free_port_range(worker_count, avoid=set(singles))
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        f"--node-ip-address={LOOPBACK}", f"--port={port}", f"--num-cpus={num_cpus}",
        "--include-dashboard=false", f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}",
        f"--object-store-memory={200 << 20}",
        f"--ray-client-server-port={client_server}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}", f"--runtime-env-agent-port={runtime_env_agent}",
        f"--dashboard-agent-listen-port={agent_listen}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics_export}",
        f"--min-worker-port={first_worker}", f"--max-worker-port={first_worker + worker_count - 1}",
    ]
    # workers import `runner` from this checkout, as a cluster node would from its install
    env = {**os.environ, **RAY_LOOPBACK_ENV, "PYTHONPATH": str(PROJECT_ROOT)}
    log = temp_dir / "ray-start.log"
    try:
        with _process_group(command, log, env) as process:
            _wait(lambda: "Ray runtime started" in log.read_text(), process, log, "ray head",
                  180)
            yield RayHead(f"{LOOPBACK}:{port}", temp_dir)
    finally:
        # anything of this node's that left its process group (found by its temp folder)
        for pid in processes_mentioning(str(temp_dir)):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextmanager
def _mlflow_serving(arguments: list[str], log: Path, name: str) -> Iterator[str]:
    """`mlflow <arguments>` on a free loopback port until it stops; yields its http:// address
    once its /health answers."""
    port = free_port()
    command = [str(BIN / "mlflow"), *arguments, "--host", LOOPBACK, "--port", str(port),
               "--workers", "1"]
    uri = f"http://{LOOPBACK}:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    with _process_group(command, log, dict(os.environ)) as process:
        _wait(healthy, process, log, name, 180)
        yield uri


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """`mlflow server` with a SQLite backend and served artifacts; yields its http:// URI."""
    with _mlflow_serving(["server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                          "--artifacts-destination", str(root / "served-artifacts")],
                         root / "mlflow-server.log", "mlflow server") as uri:
        yield uri


@contextmanager
def mlflow_ui(backend_store_uri: str, root: Path) -> Iterator[str]:
    """`mlflow ui` on a store, as README.md tells users to run it; yields its http:// address."""
    with _mlflow_serving(["ui", "--backend-store-uri", backend_store_uri],
                         root / "mlflow-ui.log", "mlflow ui") as uri:
        yield uri
