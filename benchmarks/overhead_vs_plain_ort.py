"""Target 1: the runner's pure-inference throughput / a plain ONNX Runtime loop >= 0.98.

Same model file (the runner's converted model), same batch, bs and thread settings. Each round
times the runner (the benchmark stage's own per-device code, `device_benchmark.benchmark_on_device`:
session, warm-up, stopping rule) and then a
plain `InferenceSession.run` loop of as many calls after as many warm-up calls, in alternating
order so drift on a shared machine falls on both sides; throughput is 1000 * bs / mean(ms)
on both sides.

    python -m benchmarks.overhead_vs_plain_ort --models alexnet inceptionv4 --bs 1 16
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

from benchmarks import common
from runner import device_benchmark
from runner.config import BenchmarkConfig
from runner.stages import benchmark

TARGET = 0.98


def plain_loop(session: ort.InferenceSession, feed: dict[str, np.ndarray],
               settings: BenchmarkConfig, calls: int, bs: int) -> float:
    """1000 * bs / mean(ms) of `calls` timed session.run calls, after untimed ones until both
    the runner's warm-up count and time are reached."""
    warmup_start = time.perf_counter()
    warmup_calls = 0
    while (warmup_calls < settings.warmup_iters
           or time.perf_counter() - warmup_start < settings.warmup_min_s):
        session.run(None, feed)
        warmup_calls += 1
    elapsed_ns = []
    for _ in range(calls):
        before = time.perf_counter_ns()
        session.run(None, feed)
        elapsed_ns.append(time.perf_counter_ns() - before)
    return 1000.0 * bs / (float(np.mean(elapsed_ns)) / 1e6)


def plain_session(model_path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.model_arguments(parser, bs=(1, 16))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-iters", type=int, default=10)
    parser.add_argument("--min-duration", type=float, default=2.0, help="seconds per side")
    args = parser.parse_args()
    models = common.available(args.models)
    common.header("runner pure-inference throughput / plain ONNX Runtime loop", [
        f"{args.rounds} rounds per (model, bs), sides alternating; each side >= {args.min_iters} "
        f"calls and >= {args.min_duration} s after >= 5 calls and 0.5 s of warm-up",
        "timer time.perf_counter_ns around each synchronous run; fps = 1000 * bs / mean ms",
        f"threads={args.threads or 'runtime default'}, CPUExecutionProvider, ORT {ort.__version__}",
    ])
    print(f"{'model':<12}{'bs':>4}{'runner fps':>12}{'plain fps':>11}{'ratio':>8}"
          f"{'per round':>22}  verdict")
    for model in models:
        for bs in args.bs:
            cfg = common.run_config(
                *common.base_overrides(model, bs, args), "benchmark.warmup_iters=5",
                "benchmark.warmup_min_s=0.5", f"benchmark.min_iters={args.min_iters}",
                f"benchmark.min_duration_s={args.min_duration}", "benchmark.max_trials=1",
                "benchmark.repeats=1")
            model_path = common.make(cfg, ["export", "convert"])["model"]
            settings = benchmark.Settings.from_config(cfg)
            plain = plain_session(str(model_path), args.threads)
            feed = {plain.get_inputs()[0].name: settings.batch.make()}
            runner_fps: list[float] = []
            plain_fps: list[float] = []
            calls = 0
            for round_index in range(args.rounds):
                # the runner first in even rounds (it sets the call count), the plain loop first
                # in odd ones
                order = ("runner", "plain") if round_index % 2 == 0 else ("plain", "runner")
                for side in order:
                    if side == "runner":
                        result = device_benchmark.benchmark_on_device(
                            0, settings.session, model_path, settings.batch,
                            settings.method).measurement
                        runner_fps.append(result.throughput_fps)
                        calls = result.iterations
                    else:
                        plain_fps.append(plain_loop(plain, feed, cfg.benchmark, calls, bs))
            ratio = common.mean(runner_fps) / common.mean(plain_fps)
            per_round = [r / p for r, p in zip(runner_fps, plain_fps, strict=True)]
            spread = f"{min(per_round):.3f}..{max(per_round):.3f}"
            print(f"{model:<12}{bs:>4}{common.mean(runner_fps):>12.1f}"
                  f"{common.mean(plain_fps):>11.1f}{ratio:>8.3f}{spread:>22}  "
                  f"{common.verdict(ratio, TARGET, higher_is_better=True)}")


if __name__ == "__main__":
    main()
