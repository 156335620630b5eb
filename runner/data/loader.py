"""Pipelined loader: a background thread reads and normalizes the next batches while the caller
runs the current one.

File reads, numpy's array operations and ONNX Runtime's `run` all release the GIL in their heavy
parts, so one thread is enough for reading + normalizing to overlap inference; the queue holds at
most `prefetch` prepared batches, so memory stays bounded by (prefetch + 1) batches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from runner.measurement import Clock

STOP_POLL_S = 0.05  # how often a producer blocked on a full queue checks for cancellation


@dataclass
class LoadedBatch:
    start: int  # dataset index of the first image
    stop: int
    tensor: np.ndarray  # what `prepare` made of the pixels
    read_ms: float  # time in `read` (data read)
    preprocess_ms: float  # time in `prepare` (preprocess: normalize, layout)


@dataclass
class _Failure:
    error: BaseException


_DONE = object()


def _load(start: int, stop: int, read: Callable[[int, int], np.ndarray],
          prepare: Callable[[np.ndarray], np.ndarray], clock: Clock) -> LoadedBatch:
    t0 = clock()
    pixels = read(start, stop)
    t1 = clock()
    tensor = prepare(pixels)
    t2 = clock()
    return LoadedBatch(start, stop, tensor, (t1 - t0) / 1e6, (t2 - t1) / 1e6)


def batches(
    ranges: Sequence[tuple[int, int]],
    read: Callable[[int, int], np.ndarray],
    prepare: Callable[[np.ndarray], np.ndarray],
    prefetch: int = 2,
    clock: Clock = time.perf_counter_ns,
) -> Iterator[LoadedBatch]:
    """The batches of `ranges`, in order: `prepare(read(start, stop))` for each.

    prefetch=0 loads each batch in the caller's thread when it is asked for (no overlap). Else a
    background thread loads up to `prefetch` batches ahead; an error there is raised here, and
    closing the iterator early (or an error in the caller) stops the thread before returning.
    """
    if prefetch == 0:
        for start, stop in ranges:
            yield _load(start, stop, read, prepare, clock)
        return

    ready: queue.Queue[object] = queue.Queue(maxsize=prefetch)
    cancelled = threading.Event()

    def put(item: object) -> None:
        while not cancelled.is_set():
            try:
                ready.put(item, timeout=STOP_POLL_S)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for start, stop in ranges:
                if cancelled.is_set():
                    return
                put(_load(start, stop, read, prepare, clock))
            put(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it
            put(_Failure(error))

    thread = threading.Thread(target=produce, name="runner-loader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            assert isinstance(item, LoadedBatch)
            yield item
    finally:
        cancelled.set()
        thread.join()
