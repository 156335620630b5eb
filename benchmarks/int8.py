"""int8 (chip.precision=int8, ONNX Runtime's static quantization) against fp32 on the CPU.

Per model: the fp32 and the int8 model are made by the runner's own stages (export, convert;
int8 calibrated on the first --calibration-images images of the dataset), then
- throughput: the benchmark stage's per-device code (`device_benchmark.benchmark_on_device`:
  session, warm-up, stopping rule) on the same random batch, the two sides alternating round by
  round so drift on a shared machine falls on both; fps = 1000 * bs / mean compute ms;
- agreement: the infer stage over the dataset (the real ImageNet sample where one is given,
  else generated images), the fraction of images whose top-1 class is the same in int8 and fp32,
  and int8's largest logit error relative to the image's largest |fp32 logit|.
Random weights (no checkpoint here): accuracy means nothing, and near-tied random logits make
agreement a lower bound of a trained model's. The calibration images are among those compared.
The 1-minute load average (os.getloadavg) is printed beside every figure.

    python -m benchmarks.int8 --models alexnet inceptionv4 --bs 16
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from benchmarks import common
from runner import device_benchmark
from runner.artifacts import iter_logits
from runner.config import RunConfig
from runner.stages import benchmark

PRECISIONS = ("fp32", "int8")


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def dataset_overrides(sample: str, limit: int) -> list[str]:
    """The real ImageNet sample where there is one, else generated images."""
    if sample and (Path(sample) / "val_label.txt").is_file():
        return ["dataset=imagenet_sample", f"dataset.root={sample}", f"dataset.limit={limit}"]
    return ["dataset=synthetic", f"dataset.synthetic.num_images={limit}"]


def configs(model: str, bs: int, args: argparse.Namespace) -> dict[str, RunConfig]:
    method = ["benchmark.warmup_iters=5", "benchmark.warmup_min_s=0.5",
              f"benchmark.min_iters={args.min_iters}",
              f"benchmark.min_duration_s={args.min_duration}", "benchmark.max_trials=1",
              "benchmark.repeats=1"]
    base = [*common.base_overrides(model, bs, args), *method,
            *dataset_overrides(args.sample, args.images),
            f"chip.calibration.num_images={args.calibration_images}"]
    return {p: common.run_config(*base, f"chip.precision={p}") for p in PRECISIONS}


def logits(index: Path) -> np.ndarray:
    return np.concatenate(list(iter_logits(index)))


def agreement(fp32: np.ndarray, int8: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement of int8 with fp32, and int8's largest |logit error| / the image's
    largest |fp32 logit|."""
    agree = float(np.mean(fp32.argmax(axis=1) == int8.argmax(axis=1)))
    scale = np.maximum(np.abs(fp32).max(axis=1), np.finfo(np.float32).tiny)
    relative = float(np.max(np.abs(int8 - fp32).max(axis=1) / scale))
    return agree, relative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.model_arguments(parser, bs=(16,))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-iters", type=int, default=10)
    parser.add_argument("--min-duration", type=float, default=2.0, help="seconds per side")
    parser.add_argument("--images", type=int, default=100,
                        help="images compared (the sample has 100)")
    parser.add_argument("--calibration-images", type=int, default=100,
                        help="chip.calibration.num_images (clipped to --images)")
    parser.add_argument("--sample", default=os.environ.get("RUNNER_SAMPLE_DIR", ""),
                        help="the real ImageNet sample (default $RUNNER_SAMPLE_DIR); "
                        "generated images without it")
    args = parser.parse_args()
    models = common.available(args.models)
    dataset = dataset_overrides(args.sample, args.images)[0].partition("=")[2]
    common.header("int8 / fp32 on the CPU: throughput and top-1 agreement", [
        f"{args.rounds} rounds per (model, bs), fp32 and int8 alternating; each side >= "
        f"{args.min_iters} calls and >= {args.min_duration} s after >= 5 calls and 0.5 s of "
        "warm-up; fps = 1000 * bs / mean ms (benchmark stage's code)",
        "int8: static QDQ, uint8 activations, int8 per-channel weights, MinMax on "
        f"{args.calibration_images} images; "
        f"agreement on {args.images} images of {dataset} (infer stage); random weights",
        f"threads={args.threads or 'runtime default'}, CPUExecutionProvider; load: 1-minute "
        "load average when the figure was taken",
    ])
    print(f"{'model':<12}{'bs':>4}{'fp32 fps':>10}{'load':>6}{'int8 fps':>10}{'load':>6}"
          f"{'int8/fp32':>11}{'per round':>16}")
    quality: list[str] = []
    for model in models:
        for bs in args.bs:
            cfgs = configs(model, bs, args)
            made = {p: common.make(cfg, ["export", "convert", "preprocess", "infer"])
                    for p, cfg in cfgs.items()}
            settings = {p: benchmark.Settings.from_config(cfg) for p, cfg in cfgs.items()}
            fps: dict[str, list[float]] = {p: [] for p in PRECISIONS}
            loads: dict[str, list[str]] = {p: [] for p in PRECISIONS}
            for round_index in range(args.rounds):
                order = PRECISIONS if round_index % 2 == 0 else PRECISIONS[::-1]
                for precision in order:
                    s = settings[precision]
                    result = device_benchmark.benchmark_on_device(
                        0, s.session, made[precision]["model"], s.batch, s.method).measurement
                    fps[precision].append(result.throughput_fps)
                    loads[precision].append(load())
            ratio = common.mean(fps["int8"]) / common.mean(fps["fp32"])
            per_round = [i / f for i, f in zip(fps["int8"], fps["fp32"], strict=True)]
            print(f"{model:<12}{bs:>4}{common.mean(fps['fp32']):>10.1f}{loads['fp32'][-1]:>6}"
                  f"{common.mean(fps['int8']):>10.1f}{loads['int8'][-1]:>6}{ratio:>11.2f}"
                  f"{f'{min(per_round):.2f}..{max(per_round):.2f}':>16}")
            print(f"   loads per round: fp32 {'/'.join(loads['fp32'])}, int8 "
                  f"{'/'.join(loads['int8'])}")
            agree, relative = agreement(logits(made["fp32"]["logits"]),
                                        logits(made["int8"]["logits"]))
            images = len(logits(made["fp32"]["logits"]))
            quality.append(f"{model:<12}{images:>7}{agree:>11.3f}{relative:>14.3f}{load():>6}")
    print(f"{'model':<12}{'images':>7}{'top-1 agr':>11}{'max rel err':>14}{'load':>6}")
    for line in quality:
        print(line)


if __name__ == "__main__":
    main()
