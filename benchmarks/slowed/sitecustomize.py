"""A test build 10% slower, for benchmarks/compare_noise.py: on the PYTHONPATH of a candidate
run (and so of every process it starts), every `onnxruntime.InferenceSession.run` sleeps
RUNNER_SLOWDOWN (default 1/9) of its own duration after it returns, so the runner's timed span
grows by that share and throughput falls to 1 / (1 + RUNNER_SLOWDOWN) (0.90x). The runner's code
is untouched; this module is never on a user's path."""

from __future__ import annotations

import os
import time
from typing import Any

try:
    import onnxruntime
except ImportError:  # not this interpreter's business
    onnxruntime = None

if onnxruntime is not None:
    _SHARE = float(os.environ.get("RUNNER_SLOWDOWN", str(1 / 9)))
    _run = onnxruntime.InferenceSession.run

    def _slowed_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        outputs = _run(self, *args, **kwargs)
        time.sleep((time.perf_counter() - start) * _SHARE)
        return outputs

    onnxruntime.InferenceSession.run = _slowed_run
