"""The device guard: exclusion between real processes, and the busy check against stand-ins of
nvidia-smi and npu-smi that print what their documented queries print."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest

from runner import device_lock
from runner.config import PROJECT_ROOT

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from runner.device_lock import device_lock
    with device_lock(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])):
        print("held", flush=True)
        if sys.argv[4] == "crash":
            import os
            os._exit(3)
        sys.stdin.readline()
""")


def start_holder(cache: Path, chip: str = "cpu", device: int = 0,
                 then: str = "wait") -> subprocess.Popen[str]:
    """Another process that holds the lock until a line arrives on its stdin (or crashes)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache), chip, str(device), then],
        cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def is_free(cache: Path, chip: str, device: int) -> bool:
    path = device_lock.lock_path(cache, chip, device)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def test_a_second_process_waits_for_the_device_and_names_the_holder(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        assert not is_free(tmp_path, "cpu", 0)
        records: list[device_lock.LockRecord] = []

        def take() -> None:
            with device_lock.device_lock(tmp_path, "cpu", 0) as record:
                records.append(record)

        waiter = threading.Thread(target=take)
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and not records  # still waiting while the other holds it
        holder.communicate("release\n", timeout=30)
        waiter.join(timeout=30)
        (record,) = records
        assert record.held_by is not None and f"pid {holder.pid} " in record.held_by
        assert record.waited_s > 0.4
    finally:
        holder.kill()
        holder.wait()
    assert is_free(tmp_path, "cpu", 0)
    assert device_lock.lock_path(tmp_path, "cpu", 0).read_text() == ""  # no stale holder name


def test_other_devices_and_chips_are_not_locked(tmp_path: Path) -> None:
    holder = start_holder(tmp_path, "cpu", 0)
    try:
        assert not is_free(tmp_path, "cpu", 0)
        assert is_free(tmp_path, "cpu", 1)
        assert is_free(tmp_path, "cuda", 0)
        with device_lock.device_lock(tmp_path, "cpu", 1) as record:
            assert record.held_by is None
    finally:
        holder.communicate("release\n", timeout=30)


def test_a_crashed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = start_holder(tmp_path, then="crash")
    assert holder.wait(timeout=30) == 3
    with device_lock.device_lock(tmp_path, "cpu", 0) as record:
        assert record.held_by is None


COUNTER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from runner.device_lock import device_lock
    cache, counter = Path(sys.argv[1]), Path(sys.argv[2])
    for _ in range(40):
        with device_lock(cache, "cpu", 0):
            value = int(counter.read_text())
            time.sleep(0.001)  # widen the read-modify-write window a race would need
            counter.write_text(str(value + 1))
""")


def test_two_processes_never_hold_the_device_at_once(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    workers = [subprocess.Popen([sys.executable, "-c", COUNTER, str(tmp_path), str(counter)],
                                cwd=PROJECT_ROOT) for _ in range(2)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    assert counter.read_text() == "80"


def stand_in(bin_dir: Path, name: str, script: str) -> Path:
    """An executable `name` on a PATH folder that logs its arguments and prints `script`."""
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\necho \"$@\" >> {bin_dir / (name + '.args')}\n{script}\n")
    tool.chmod(0o755)
    return tool


NVIDIA_SMI = """
case "$*" in
  *--query-gpu=*) echo "{util}, 5120" ;;
  *--query-compute-apps=*) echo "4242, /usr/bin/python3" ;;
  *) exit 2 ;;
esac
"""

NPU_SMI_USAGES = """
cat <<'EOF'
        NPU ID                         : 1
        Chip Count                     : 2

        Chip ID                        : 0
        Memory Capacity(MB)            : 10810
        Memory Usage Rate(%)           : 35
        Aicore Usage Rate(%)           : {first}
        Aicpu Usage Rate(%)            : 0
        Ctrlcpu Usage Rate(%)          : 1

        Chip ID                        : 1
        Memory Usage Rate(%)           : 2
        Aicore Usage Rate(%)           : {second}
EOF
"""


@pytest.fixture
def tools_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def reading(check: device_lock.BusyCheck, source: str) -> device_lock.BusyReading:
    (found,) = [r for r in check.readings if r.source == source]
    return found


def test_a_busy_gpu_is_reported_with_the_processes_on_it(tools_path: Path) -> None:
    stand_in(tools_path, "nvidia-smi", NVIDIA_SMI.format(util=87))
    check = device_lock.check_busy("cuda", [1], threshold=0.25)
    gpu = reading(check, "nvidia-smi")
    assert gpu.busy_pct == 87.0
    assert "4242 /usr/bin/python3" in gpu.detail
    (warning,) = [w for w in check.warnings if w.startswith("nvidia-smi")]
    assert "87% busy" in warning and "4242" in warning
    args = (tools_path / "nvidia-smi.args").read_text().splitlines()
    assert all(line.split()[-2:] == ["-i", "1"] for line in args)


def test_an_idle_gpu_gives_no_warning(tools_path: Path) -> None:
    stand_in(tools_path, "nvidia-smi", NVIDIA_SMI.format(util=3))
    check = device_lock.check_busy("cuda", [0], threshold=0.25)
    assert reading(check, "nvidia-smi").busy_pct == 3.0
    assert not [w for w in check.warnings if w.startswith("nvidia-smi")]


def test_the_npu_reading_is_its_busiest_ai_core(tools_path: Path) -> None:
    stand_in(tools_path, "npu-smi", NPU_SMI_USAGES.format(first=0, second=95))
    check = device_lock.check_busy("npu", [1], threshold=0.5)
    assert reading(check, "npu-smi").busy_pct == 95.0
    assert any(w.startswith("npu-smi: 95% busy") for w in check.warnings)
    assert (tools_path / "npu-smi.args").read_text().split() == ["info", "-t", "usages", "-i",
                                                                 "1"]


def test_missing_or_unreadable_tools_are_noted_not_fatal(tools_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("PATH", str(tools_path))  # no nvidia-smi anywhere
    gpu = reading(device_lock.check_busy("cuda", [0], 0.25), "nvidia-smi")
    assert gpu.busy_pct is None and gpu.detail == "nvidia-smi not found"
    stand_in(tools_path, "npu-smi", "echo 'Error: device 0 not found'")
    npu = device_lock.npu_busy(0)
    assert npu.busy_pct is None and "could not read" in npu.detail


def test_the_cpu_chip_checks_only_the_host_cpu() -> None:
    assert device_lock.device_tools("cpu") == []
    check = device_lock.check_busy("cpu", [0], threshold=0.25)
    assert [r.source for r in check.readings] == ["cpu"]
    assert 0.0 <= check.readings[0].busy_pct <= 100.0


def test_cpu_load_of_another_process_is_seen() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nprint(flush=True)\n"
                                "end = time.time() + 5\nwhile time.time() < end: pass"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert spinner.stdout is not None and spinner.stdout.readline() == "\n"
        # one spinning process keeps at least one core in use: on n cores >= 100/n percent
        # (less a margin for the sampling), whatever else the machine runs
        assert device_lock.cpu_use(1.0).busy_pct >= 0.8 * 100 / os.cpu_count()
    finally:
        spinner.kill()
        spinner.wait()


def cpu_times(**seconds: float) -> object:
    """A psutil.cpu_times() sample of this platform's kind with the given fields (others 0)."""
    kind = type(psutil.cpu_times())
    return kind(**{name: seconds.get(name, 0.0) for name in kind._fields})


def test_steal_time_is_split_from_other_processes() -> None:
    # 100 s of all cores' time: 50 s user (20 s of them ours), 30 s idle, 20 s stolen
    before = cpu_times(user=100.0, idle=100.0, steal=10.0)
    after = cpu_times(user=150.0, idle=130.0, steal=30.0)
    use = device_lock.CpuUse.between(before, after, own_s=20.0)
    assert (use.others_pct, use.stolen_pct, use.busy_pct) == (30.0, 20.0, 50.0)
    # the guard's warning names the hypervisor's part
    record = device_lock.GuardRecord([], device_lock.BusyCheck(threshold_pct=25.0), use)
    assert record.busy_during_warning == (
        "cpu: 50% busy with other work during timing (threshold 25%); 20% stolen by the "
        "hypervisor: figures may be low")
    assert record.report()["stolen_during_pct"] == 20.0
    # no steal, no clause
    quiet = device_lock.CpuUse.between(before, cpu_times(user=150.0, idle=150.0, steal=10.0),
                                       own_s=20.0)
    assert quiet.stolen_pct == 0.0 and quiet.others_pct == 30.0
