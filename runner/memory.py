"""Peak resident memory of the runner's process tree, sampled in a background thread.

As optimum-benchmark's memory tracker does (psutil `memory_info().rss` of the benchmarked
process, polled in a loop beside it, the maximum kept), but in a thread of the process itself,
with its children (preprocess decode workers, one worker per device) summed in. The kernel keeps
a high-water mark only per process (ru_maxrss, what benchmarks/peak_memory.py reads), not per
process tree nor per stage, hence the sampling.
"""

from __future__ import annotations

import threading
from types import TracebackType

import psutil

SAMPLE_S = 0.05
# listing the children scans every process of the host (~3 ms here): every 10th sample only, so
# the sampler costs well under 1% of a core while a benchmark is timed
CHILDREN_EVERY = 10
MIB = 2**20
METHOD = (f"peak of the summed RSS (psutil memory_info().rss) of the runner's process and its "
          f"children, sampled every {SAMPLE_S:g} s in a background thread (children listed "
          f"every {SAMPLE_S * CHILDREN_EVERY:g} s); a page shared by forked workers counts in "
          "each (PSS would not: benchmarks/full_size.py); MiB = 2**20 bytes")


def tree_pss_bytes(root: psutil.Process) -> int:
    """The process tree's memory: each process's PSS (its resident pages, a page shared by k
    processes counted 1/k in each, file-backed ones included), so forked decode workers sharing
    the parent's pages are not counted twice as summed RSS would. Reads smaps: ~10x the cost of
    RSS, too dear to sample often in the run itself (`PeakSampler` sums RSS)."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:
            continue
    return total


class PeakSampler:
    """`with PeakSampler() as peak:` samples until the block ends; `peak.mark()` is the peak
    since the previous mark (a stage's), `peak.peak_mib` the peak of the whole block (MiB)."""

    def __init__(self, interval_s: float = SAMPLE_S) -> None:
        self.interval_s = interval_s
        self._root = psutil.Process()
        self._children: list[psutil.Process] = []
        self._samples = 0
        self._lock = threading.Lock()
        self._section = 0  # bytes, since the last mark
        self._peak = 0  # bytes, since the start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)

    def __enter__(self) -> PeakSampler:
        self._sample()  # a block shorter than one interval still has its figure
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        with self._lock:
            return self._peak / MIB

    def mark(self) -> float:
        """The peak since the previous mark, in MiB (a sample taken now included)."""
        self._sample()
        with self._lock:
            section, self._section = self._section, 0
        return section / MIB

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        with self._lock:  # one sampler at a time (the thread and a mark)
            if self._samples % CHILDREN_EVERY == 0:
                try:
                    self._children = self._root.children(recursive=True)
                except psutil.Error:
                    self._children = []
            self._samples += 1
            total = 0
            for process in (self._root, *self._children):
                try:
                    total += process.memory_info().rss
                except psutil.Error:  # a worker that ended since it was listed
                    continue
            self._section = max(self._section, total)
            self._peak = max(self._peak, total)
