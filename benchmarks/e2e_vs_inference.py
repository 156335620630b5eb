"""Target: e2e_fps from the preprocessed cache / pure-inference throughput >= 0.95 (bs >= 8),
and the pipelined pass never below the serial one.

All figures come from the runner's own stages, side by side, in alternating order: the e2e
stage over N preprocessed synthetic images (read + normalize in the pipelined loader, infer,
write logits; its `e2e_fps`), the same stage with `e2e.prefetch=0` (each batch read and
normalized in the main thread, no overlap: the serial pass), and the benchmark stage at the same
bs (`throughput_fps`, ais_bench's 1000 * bs / mean compute ms). The load average is printed
beside each row; the breakdown of the last pipelined pass like the older benchmark tool's file.

Passes minutes apart drift by a few percent on a shared VM, so each row also gives a ratio taken
within the pipelined passes themselves: e2e_fps / e2e_infer_fps (wall time vs the time inside
session.run): 1.0 when the main thread never waits for a batch. It cannot show what the loader's
CPU takes from inference on shared cores; the cross-pass ratios can.

    python -m benchmarks.e2e_vs_inference --models alexnet inceptionv4 --bs 16 --images 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

from benchmarks import common
from runner import inference
from runner.stages import benchmark, e2e

TARGET = 0.95


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.model_arguments(parser, bs=(16,))
    parser.add_argument("--images", type=int, default=2000, help="synthetic images per pass")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-iters", type=int, default=20)
    parser.add_argument("--min-duration", type=float, default=3.0)
    args = parser.parse_args()
    models = common.available(args.models)
    common.header("e2e_fps (e2e stage, from the preprocessed cache) / pure-inference "
                  "throughput_fps", [
        f"{args.rounds} rounds, alternating order; e2e: {args.images} synthetic images, "
        f"{inference.WARMUP_CALLS} warm-up calls, prefetch {inference.DEFAULT_PREFETCH} batches "
        "(serial: prefetch 0)",
        f"benchmark: >= 10 calls and 0.5 s warm-up, >= {args.min_iters} calls and >= "
        f"{args.min_duration} s timed, 1 repeat",
        "timer time.perf_counter_ns; see e2e.json / benchmark.json 'method' for each span",
    ])
    breakdowns = []
    print(f"{'model':<12}{'bs':>4}{'e2e fps':>9}{'serial':>8}{'infer fps':>11}{'ratio':>8}"
          f"{'serial ratio':>14}{'in-pass':>9}{'load':>6}  verdict")
    for model in models:
        for bs in args.bs:
            cfg = common.run_config(
                *common.base_overrides(model, bs, args),
                f"dataset.synthetic.num_images={args.images}", "benchmark.warmup_iters=10",
                "benchmark.warmup_min_s=0.5", f"benchmark.min_iters={args.min_iters}",
                f"benchmark.min_duration_s={args.min_duration}", "benchmark.repeats=1")
            paths = common.make(cfg, ["export", "convert", "preprocess"])
            pipelined, serial, pure, in_pass = [], [], [], []
            last_e2e: dict[str, float] = {}
            for round_index in range(args.rounds):
                sides = ["e2e", "serial", "pure"]
                for side in sides if round_index % 2 == 0 else reversed(sides):
                    with tempfile.TemporaryDirectory() as scratch:
                        out = Path(scratch)
                        settings = e2e.Settings.from_config(cfg)
                        if side == "e2e":  # pipelined, whatever this host's default is
                            pipelined_settings = dataclasses.replace(
                                settings, prefetch=inference.DEFAULT_PREFETCH)
                            last_e2e = e2e.run(pipelined_settings, paths, out).metrics
                            pipelined.append(last_e2e["e2e_fps"])
                            in_pass.append(last_e2e["e2e_fps"] / last_e2e["e2e_infer_fps"])
                        elif side == "serial":
                            serial_settings = dataclasses.replace(settings, prefetch=0)
                            serial.append(e2e.run(serial_settings, paths, out)
                                          .metrics["e2e_fps"])
                        else:
                            measured = benchmark.run(benchmark.Settings.from_config(cfg), paths,
                                                     out)
                            pure.append(measured.metrics["throughput_fps"])
            ratio = common.mean(pipelined) / common.mean(pure)
            serial_ratio = common.mean(serial) / common.mean(pure)
            print(f"{model:<12}{bs:>4}{common.mean(pipelined):>9.1f}{common.mean(serial):>8.1f}"
                  f"{common.mean(pure):>11.1f}{ratio:>8.3f}{serial_ratio:>14.3f}"
                  f"{common.mean(in_pass):>9.3f}"
                  f"{os.getloadavg()[0]:>6.2f}  "
                  f"{common.verdict(ratio, TARGET, higher_is_better=True)}")
            print("   per round (fps): " + "; ".join(
                f"{name} {', '.join(f'{v:.1f}' for v in values)}"
                for name, values in (("e2e", pipelined), ("serial", serial), ("infer", pure))))
            breakdowns.append((model, bs, last_e2e))
    for model, bs, metrics in breakdowns:
        print(f"-- breakdown of the last pipelined pass, {model} bs={bs} "
              f"({metrics['e2e_images']:.0f} images; parts overlap)")
        print(f"   [e2e] throughputRate: {metrics['e2e_fps']:.1f}, wall: "
              f"{metrics['e2e_wall_s']:.2f} s")
        for part, label in (("read", "data read"), ("preprocess", "preprocess"),
                            ("infer", "infer"), ("post", "post")):
            print(f"   [{label}] throughputRate: {metrics.get(f'e2e_{part}_fps', 0.0):.1f}, "
                  f"moduleLatency: {metrics[f'e2e_{part}_ms']:.2f} ms/batch")


if __name__ == "__main__":
    main()
