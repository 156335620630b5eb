"""What `benchmark.isolate_repeats` costs: the benchmark stage's wall time with each repeat in a
fresh process (true, the default) and with the repeats back to back in one process (false), and
the throughput each measures.

The two alternate over --rounds rounds on the same exported model (the runner's own stage code,
`runner.stages.benchmark.run`, with the default `benchmark.*` settings unless told otherwise);
each figure is the mean of its rounds, the ratio is isolated / in one process, and the load
average (os.getloadavg) prints beside every round.

    python -m benchmarks.repeat_isolation --models alexnet --bs 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks import common
from runner.stages import benchmark

WAYS = {"fresh processes": "benchmark.isolate_repeats=true",
        "one process": "benchmark.isolate_repeats=false"}


def timed_stage(settings: benchmark.Settings, paths: dict[str, Path]) -> tuple[float, float]:
    """(wall seconds of the benchmark stage, its throughput_fps)."""
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        output = benchmark.run(settings, paths, Path(scratch))
        return time.perf_counter() - started, output.metrics["throughput_fps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.model_arguments(parser, bs=(4,))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--benchmark", nargs="*", default=[],
                        help="benchmark.* overrides (default: none, the settings users run)")
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    common.header("the benchmark stage with its repeats in fresh processes and in one", [
        f"{' '.join(args.benchmark) or 'the default benchmark.* settings'}; "
        f"{args.rounds} rounds, the two ways alternating; wall time of runner.stages.benchmark.run",
    ])
    print(f"{'model':<12}{'bs':>4}{'fresh s':>9}{'one s':>8}{'ratio':>7}{'fresh fps':>11}"
          f"{'one fps':>9}{'load':>6}")
    for model in common.available(args.models):
        for bs in args.bs:
            overrides = [*common.base_overrides(model, bs, args), *args.benchmark]
            settings = {way: benchmark.Settings.from_config(common.run_config(*overrides, flag))
                        for way, flag in WAYS.items()}
            paths = common.make(common.run_config(*overrides), ["export", "convert"])
            seconds: dict[str, list[float]] = {way: [] for way in WAYS}
            fps: dict[str, list[float]] = {way: [] for way in WAYS}
            for n in range(args.rounds):
                for way in (list(WAYS) if n % 2 == 0 else list(WAYS)[::-1]):
                    wall, figure = timed_stage(settings[way], paths)
                    seconds[way].append(wall)
                    fps[way].append(figure)
                print(f"   round {n + 1}: " + "; ".join(
                    f"{way} {seconds[way][-1]:.2f} s, {fps[way][-1]:.1f} img/s" for way in WAYS)
                    + f"  load {os.getloadavg()[0]:.2f}")
            fresh, one = (common.mean(seconds[way]) for way in WAYS)
            print(f"{model:<12}{bs:>4}{fresh:>9.2f}{one:>8.2f}{fresh / one:>7.2f}"
                  f"{common.mean(fps['fresh processes']):>11.1f}"
                  f"{common.mean(fps['one process']):>9.1f}{os.getloadavg()[0]:>6.2f}")


if __name__ == "__main__":
    main()
