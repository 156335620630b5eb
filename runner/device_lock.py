"""Device guard: one timed job per (chip, device) at a time, and a warning when it is busy.

Jobs of a sweep run concurrently (joblib, submitit launchers); two of them timing on the same
device would each report about half the throughput. `guard` holds an exclusive `fcntl.flock` on
`<cache_dir>/locks/<chip>-device<id>.lock` around timed work (the kernel releases it when a
process dies, so a crash leaves no stale lock), then samples how busy the device is with others'
work (CPU load; nvidia-smi for CUDA providers; npu-smi for Ascend) and warns above the threshold.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from runner.locks import LockRecord, file_lock
from runner.tools import tool_output

log = logging.getLogger("runner")

LOCK_DIR = "locks"
CPU_SAMPLE_S = 0.5  # long enough to average over scheduler ticks, short next to a benchmark
TOOL_TIMEOUT_S = 10


def lock_path(cache_dir: Path, chip: str, device: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", chip)
    return cache_dir / LOCK_DIR / f"{safe}-device{device}.lock"


@contextmanager
def device_lock(cache_dir: Path, chip: str, device: int) -> Iterator[LockRecord]:
    """Hold the exclusive lock of (chip, device); wait, saying for whom, while another job does."""
    def say_waiting(path: Path, holder: str) -> None:
        log.warning("device %s:%d is in use by %s; waiting for it (lock %s)", chip, device,
                    holder, path)

    with file_lock(lock_path(cache_dir, chip, device), on_wait=say_waiting) as record:
        yield record


@dataclass
class BusyReading:
    source: str  # "cpu", "nvidia-smi", "npu-smi"
    busy_pct: float | None  # None when the reading could not be taken
    detail: str = ""
    stolen_pct: float | None = None  # cpu: the part of busy_pct the hypervisor took (steal)


@dataclass(frozen=True)
class CpuUse:
    """What of all cores' time over a span was not this process's to use, in percent.

    On a virtual machine the hypervisor may run other guests on this VM's cores while our work
    waits ("steal" in /proc/stat): the cores look busy to us, and figures come out low, as when
    another process competes. Both count as busy; the stolen part is named, since no process
    here can be stopped to free it (measured here: 4-26% during a preprocess pass).
    """

    others_pct: float  # other processes of this machine
    stolen_pct: float  # taken by the hypervisor

    @property
    def busy_pct(self) -> float:
        return min(100.0, self.others_pct + self.stolen_pct)

    @classmethod
    def between(cls, before: Any, after: Any, own_s: float) -> CpuUse:
        """From two psutil.cpu_times() samples and this process's CPU seconds between them."""
        def total_of(t: Any) -> float:  # Linux counts guest time inside user time already
            return sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

        def idle(t: Any) -> float:
            return t.idle + getattr(t, "iowait", 0.0)

        total = total_of(after) - total_of(before)
        if total <= 0:
            return cls(0.0, 0.0)
        stolen = getattr(after, "steal", 0.0) - getattr(before, "steal", 0.0)
        others = total - (idle(after) - idle(before)) - stolen - own_s

        def pct(seconds: float) -> float:
            return max(0.0, min(100.0, 100.0 * seconds / total))

        return cls(pct(others), pct(stolen))


def cpu_use(sample_s: float = CPU_SAMPLE_S) -> CpuUse:
    """How busy all cores are with other work over `sample_s` (this process excluded)."""
    me = psutil.Process()
    before, mine_before = psutil.cpu_times(), me.cpu_times()
    time.sleep(sample_s)
    after, mine_after = psutil.cpu_times(), me.cpu_times()
    mine = (mine_after.user - mine_before.user) + (mine_after.system - mine_before.system)
    return CpuUse.between(before, after, mine)


def stolen_words(stolen_pct: float | None) -> str:
    """"N% stolen by the hypervisor", or "" when under 1% (or not read): one wording for the
    warnings, the guard's readings and the verdict's reasons."""
    if stolen_pct is None or stolen_pct < 1:
        return ""
    return f"{stolen_pct:.0f}% stolen by the hypervisor"


def cpu_reading() -> BusyReading:
    use = cpu_use()
    return BusyReading("cpu", use.busy_pct, stolen_words(use.stolen_pct), use.stolen_pct)


def _run_tool(command: list[str]) -> str | None:
    return tool_output(command, timeout_s=TOOL_TIMEOUT_S)


def nvidia_busy(device: int) -> BusyReading:
    """GPU utilization and the other processes on it, from nvidia-smi's CSV queries."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return BusyReading("nvidia-smi", None, "nvidia-smi not found")
    usage = _run_tool([tool, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,"
                       "nounits", "-i", str(device)])
    apps = _run_tool([tool, "--query-compute-apps=pid,process_name", "--format=csv,noheader",
                      "-i", str(device)])
    try:
        utilization = float(usage.strip().splitlines()[0].split(",")[0]) if usage else None
    except (ValueError, IndexError):
        utilization = None
    others = []
    for line in (apps or "").strip().splitlines():
        pid, _, name = line.partition(",")
        if pid.strip().isdigit() and int(pid) != os.getpid():
            others.append(f"{pid.strip()} {name.strip()}")
    detail = f"other processes: {', '.join(others)}" if others else ""
    if utilization is None:
        return BusyReading("nvidia-smi", None, detail or "could not read nvidia-smi's output")
    return BusyReading("nvidia-smi", utilization, detail)


def npu_busy(device: int) -> BusyReading:
    """The highest 'Aicore Usage Rate(%)' of `npu-smi info -t usages -i <device>`."""
    tool = shutil.which("npu-smi")
    if tool is None:
        return BusyReading("npu-smi", None, "npu-smi not found")
    output = _run_tool([tool, "info", "-t", "usages", "-i", str(device)])
    rates = [float(m) for m in re.findall(r"Aicore Usage Rate\(%\)\s*:\s*([\d.]+)", output or "")]
    if not rates:
        return BusyReading("npu-smi", None, "could not read npu-smi's output")
    return BusyReading("npu-smi", max(rates))


def device_tools(device_type: str) -> list[str]:
    """Which accelerator tools report on the chip's device, besides the host CPU."""
    return {"cuda": ["nvidia-smi"], "npu": ["npu-smi"]}.get(device_type, [])


@dataclass
class BusyCheck:
    threshold_pct: float
    readings: list[BusyReading] = field(default_factory=list)

    @property
    def busy_pct(self) -> float | None:
        """The busiest reading, in percent."""
        values = [r.busy_pct for r in self.readings if r.busy_pct is not None]
        return max(values) if values else None

    @property
    def warnings(self) -> list[str]:
        return [
            f"{r.source}: {r.busy_pct:.0f}% busy with other work before timing (threshold "
            f"{self.threshold_pct:.0f}%){'; ' + r.detail if r.detail else ''}: figures may be low"
            for r in self.readings
            if r.busy_pct is not None and r.busy_pct > self.threshold_pct
        ]


def check_busy(device_type: str, devices: list[int], threshold: float) -> BusyCheck:
    check = BusyCheck(threshold_pct=100.0 * threshold)
    check.readings.append(cpu_reading())
    readers = {"nvidia-smi": nvidia_busy, "npu-smi": npu_busy}
    for tool in device_tools(device_type):
        check.readings.extend(readers[tool](device) for device in devices)
    return check


@dataclass
class GuardRecord:
    locks: list[LockRecord]
    busy: BusyCheck
    # all cores' time used by other work while the guarded (timed) work ran: other processes
    # (this one and the workers it started excluded) and the hypervisor; set when the block ends
    busy_during: CpuUse | None = None

    @property
    def busy_during_pct(self) -> float | None:
        return None if self.busy_during is None else self.busy_during.busy_pct

    @property
    def stolen_before_pct(self) -> float | None:
        return next((r.stolen_pct for r in self.busy.readings if r.source == "cpu"), None)

    @property
    def stolen_during_pct(self) -> float | None:
        return None if self.busy_during is None else self.busy_during.stolen_pct

    @property
    def busy_during_warning(self) -> str | None:
        if self.busy_during is None or self.busy_during.busy_pct <= self.busy.threshold_pct:
            return None
        stolen = stolen_words(self.busy_during.stolen_pct)
        return (f"cpu: {self.busy_during.busy_pct:.0f}% busy with other work during timing "
                f"(threshold {self.busy.threshold_pct:.0f}%){f'; {stolen}' if stolen else ''}: "
                "figures may be low")

    def report(self) -> dict[str, Any]:
        warnings = [*self.busy.warnings, *filter(None, [self.busy_during_warning])]
        return {
            "locks": [asdict(lock) for lock in self.locks],
            "busy_pct": self.busy.busy_pct,
            "busy_during_pct": self.busy_during_pct,
            "stolen_pct": self.stolen_before_pct,
            "stolen_during_pct": self.stolen_during_pct,
            "busy_threshold_pct": self.busy.threshold_pct,
            "readings": [asdict(r) for r in self.busy.readings],
            "warnings": warnings,
        }


class OthersCpuMeter:
    """All cores' time used by other work between `start` and `stop`: the whole machine's busy
    time less this process's and its finished children's (the device workers), split into other
    processes and the hypervisor's steal."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._start = self._sample()

    def _sample(self) -> tuple[Any, float]:
        mine = self._me.cpu_times()
        own = mine.user + mine.system + mine.children_user + mine.children_system
        return psutil.cpu_times(), own

    def stop(self) -> CpuUse:
        end = self._sample()
        return CpuUse.between(self._start[0], end[0], end[1] - self._start[1])


@contextmanager
def guard(cache_dir: Path, chip: str, device_type: str, devices: list[int],
          threshold: float) -> Iterator[GuardRecord]:
    """Hold the locks of all the job's devices, then check how busy they are; for the timed work
    inside. Locks are taken in device order, so two jobs sharing devices never each hold one
    that the other waits for (their workers would meet at the start barrier, deadlocked)."""
    ordered = sorted(set(devices))
    with ExitStack() as stack:
        locks = [stack.enter_context(device_lock(cache_dir, chip, d)) for d in ordered]
        busy = check_busy(device_type, ordered, threshold)
        for warning in busy.warnings:
            log.warning("%s devices %s: %s", chip, ordered, warning)
        record = GuardRecord(locks, busy)
        meter = OthersCpuMeter()
        yield record
        record.busy_during = meter.stop()
        if record.busy_during_warning:
            log.warning("%s devices %s: %s", chip, ordered, record.busy_during_warning)
