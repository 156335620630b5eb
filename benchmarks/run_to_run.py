"""Target 4: run-to-run coefficient of variation of throughput over 5 repeats <= 3%.

Two figures, one after the other in one invocation:
- across runs: the benchmark stage run 5 times, each with a fresh session and its own warm-up
  (what a user sees re-running the same job); CV = sample std / mean of their throughput_fps;
- within a run: one benchmark stage with benchmark.repeats=5 and benchmark.isolate_repeats=false
  (one warm-up, 5 timed runs back to back in this process): the `throughput_cv` metric it logs.
Each row also prints every run's and repeat's figure, and a machine probe taken before each run
(`common.machine_probe_ms`, no model involved) and the share of the CPU the hypervisor took
during each run's timing (steal, the benchmark stage's `benchmark_cpu_stolen_during_pct`): when
the probe or the steal moves as much as the figures, the spread is the machine's, not the
runner's.

    python -m benchmarks.run_to_run --models alexnet inceptionv4 --bs 1 16
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks import common
from runner.measurement import coefficient_of_variation
from runner.stages import benchmark

TARGET = 0.03
PROBE = "a fixed pure-Python loop on one core, median of 5"
STOLEN = "benchmark_cpu_stolen_during_pct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.model_arguments(parser, bs=(1, 16))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-iters", type=int, default=20)
    parser.add_argument("--min-duration", type=float, default=3.0)
    args = parser.parse_args()
    models = common.available(args.models)
    common.header(f"run-to-run CV of throughput_fps over {args.repeats} repeats", [
        f"each timed run: >= {args.min_iters} calls and >= {args.min_duration} s after >= 10 "
        "calls and 0.5 s of warm-up; stability retries up to 3 trials",
        "CV = sample standard deviation / mean; timer time.perf_counter_ns around session.run",
    ])
    print(f"{'model':<12}{'bs':>4}{'fps (mean)':>12}{'CV across runs':>16}{'CV within a run':>17}"
          f"{'load':>6}  verdict (both)")
    for model in models:
        for bs in args.bs:
            settings = [*common.base_overrides(model, bs, args), "benchmark.warmup_iters=10",
                        "benchmark.warmup_min_s=0.5", f"benchmark.min_iters={args.min_iters}",
                        f"benchmark.min_duration_s={args.min_duration}"]
            single = common.run_config(*settings, "benchmark.repeats=1")
            paths = common.make(single, ["export", "convert"])
            across, probes, stolen = [], [], []
            for _ in range(args.repeats):
                probes.append(common.machine_probe_ms())
                with tempfile.TemporaryDirectory() as scratch:
                    output = benchmark.run(benchmark.Settings.from_config(single), paths,
                                           Path(scratch))
                    across.append(output.metrics["throughput_fps"])
                    stolen.append(output.metrics.get(STOLEN, 0.0))
            repeated = common.run_config(*settings, f"benchmark.repeats={args.repeats}",
                                        "benchmark.isolate_repeats=false")
            with tempfile.TemporaryDirectory() as scratch:
                metrics = benchmark.run(benchmark.Settings.from_config(repeated), paths,
                                        Path(scratch)).metrics
                within = metrics["throughput_cv"]
                report = json.loads((Path(scratch) / benchmark.RESULT_FILE).read_text())
                repeats = [run["throughput_fps"] for run in report["repeats"]]
            cv_across = coefficient_of_variation(across)
            assert cv_across is not None, "needs --repeats >= 2"
            worst = max(cv_across, within)
            print(f"{model:<12}{bs:>4}{common.mean(across):>12.1f}{cv_across:>16.2%}"
                  f"{within:>17.2%}{os.getloadavg()[0]:>6.2f}  "
                  f"{common.verdict(worst, TARGET, higher_is_better=False)}")
            # which runs moved: a slow outlier, a drift, or spread throughout
            print(f"   fps of each run: {', '.join(f'{v:.1f}' for v in across)}; of each "
                  f"repeat within the run: {', '.join(f'{v:.1f}' for v in repeats)}")
            print(f"   machine probe before each run (ms, {PROBE}): "
                  f"{', '.join(f'{v:.1f}' for v in probes)}; CV "
                  f"{coefficient_of_variation(probes):.2%}")
            print(f"   CPU stolen by the hypervisor during each run's timing: "
                  f"{common.percents(stolen)}; during the run with repeats: "
                  f"{metrics.get(STOLEN, 0.0):.0f}%")


if __name__ == "__main__":
    main()
