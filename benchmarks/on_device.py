"""On-device preprocessing (model.preprocess.on_device=true) against the float route.

Per model, through the runner's own cached stages (export, convert, preprocess, infer):
- agreement: top-1..5 of each route and the largest |logit difference| on the dataset (the real
  ImageNet sample where one is given, else generated images), on the CPU (ONNX Runtime: the
  uint8-input model against the float route's model) and on Ascend through the stand-ins
  (tests/standins: AIPP in fp16 against the float OM, both force_fp16, and against the CPU's
  float route);
- bytes per image: of the preprocess cache (uint8 crops, shared by both routes) and of what each
  route feeds the model, which is what ais_bench's input .bin files would hold;
- e2e throughput on the CPU: `runner.inference.infer_chunks` (the e2e stage's pass: read the
  cached crops, normalize or not, infer, write the logits) over the dataset, the two routes
  alternating round by round so drift on a shared machine falls on both; images / wall seconds.
Random weights (no checkpoint here): accuracy means nothing, agreement between routes does. The
1-minute load average (os.getloadavg) is printed beside every figure.

    python -m benchmarks.on_device --models alexnet inceptionv4 --bs 16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import common
from runner import inference
from runner.accuracy import topk_accuracy
from runner.artifacts import PreprocessedDataset, chunk_ranges, load_logits
from runner.backends import SessionSettings, backend_for
from runner.config import RunConfig
from runner.data.transforms import normalize

ROUTES = ("host_float", "on_device")
ASCEND_CHIP = "ascend310p3"


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def dataset_overrides(sample: str, limit: int) -> list[str]:
    """The real ImageNet sample where there is one, else generated images."""
    if sample and (Path(sample) / "val_label.txt").is_file():
        return ["dataset=imagenet_sample", f"dataset.root={sample}", f"dataset.limit={limit}"]
    return ["dataset=synthetic", f"dataset.synthetic.num_images={limit}"]


def configs(model: str, bs: int, chip: str, args: argparse.Namespace) -> dict[str, RunConfig]:
    base = [*common.base_overrides(model, bs, args), f"chip={chip}",
            *dataset_overrides(args.sample, args.images)]
    return {route: common.run_config(*base, f"model.preprocess.on_device={route == 'on_device'}")
            for route in ROUTES}


def use_ascend_standins(root: Path) -> None:
    """The stand-in atc, npu-smi, ais_bench and aclruntime (tests/standins), in this process
    and its children."""
    sys.path.insert(0, str(common.PROJECT_ROOT))
    from tests.standins import install

    standins = install(root)
    env = standins.env(generation="2024-06", chips="310P3")
    os.environ.update(env)
    for site in reversed(env["PYTHONPATH"].split(os.pathsep)):
        sys.path.insert(0, site)


def topk(cfg: RunConfig, made: dict[str, Path]) -> tuple[np.ndarray, list[float]]:
    logits = load_logits(made["logits"])
    labels = PreprocessedDataset(made["dataset"]).labels
    return logits, topk_accuracy(logits, labels, cfg.model.class_offset)


def show_topk(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def e2e_fps(cfgs: dict[str, RunConfig], made: dict[str, dict[str, Path]], rounds: int,
            work: Path) -> tuple[dict[str, list[float]], dict[str, list[str]],
                                 dict[str, list[float]]]:
    """images/s of the e2e pass of each route, alternating; the loads; normalize ms/batch."""
    fps: dict[str, list[float]] = {r: [] for r in ROUTES}
    loads: dict[str, list[str]] = {r: [] for r in ROUTES}
    preprocess_ms: dict[str, list[float]] = {r: [] for r in ROUTES}
    sessions = {}
    for route, cfg in cfgs.items():
        settings = SessionSettings.from_config(cfg)
        sessions[route] = backend_for(settings.runtime).open_session(made[route]["model"],
                                                                     settings, 0)
    for round_index in range(rounds):
        order = ROUTES if round_index % 2 == 0 else ROUTES[::-1]
        for route in order:
            cfg = cfgs[route]
            data = PreprocessedDataset(made[route]["dataset"])
            chunks = chunk_ranges(len(data), cfg.bs * inference.BATCHES_PER_CHUNK)
            normalization = cfg.model.preprocess.normalization()
            first = normalize(data.read(0, cfg.bs), normalization)
            for _ in range(inference.WARMUP_CALLS):
                sessions[route].run(first)
            out = work / f"{route}-{round_index}"
            out.mkdir(parents=True)
            times = inference.infer_chunks(sessions[route], data, normalization, cfg.bs, chunks,
                                           out, prefetch=0)
            fps[route].append(times.images / times.wall_s)
            preprocess_ms[route].append(times.preprocess_ms / times.batches)
            loads[route].append(load())
    return fps, loads, preprocess_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.model_arguments(parser, bs=(16,))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--images", type=int, default=100,
                        help="images compared and passed through (the sample has 100)")
    parser.add_argument("--sample", default=os.environ.get("RUNNER_SAMPLE_DIR", ""),
                        help="the real ImageNet sample (default $RUNNER_SAMPLE_DIR); "
                        "generated images without it")
    parser.add_argument("--no-ascend", action="store_true",
                        help="leave out the Ascend route through the stand-ins")
    args = parser.parse_args()
    models = common.available(args.models)
    dataset = dataset_overrides(args.sample, args.images)[0].partition("=")[2]
    common.header("on-device preprocessing (uint8 input) / float route", [
        f"{args.images} images of {dataset}; random weights; CPU: chip=cpu (ONNX Runtime, "
        f"threads={args.threads or 'runtime default'}); Ascend: chip={ASCEND_CHIP} through the "
        "stand-ins (force_fp16; AIPP in fp16)",
        f"e2e: infer_chunks over the cached crops (read, normalize or not, infer, write), "
        f"prefetch 0, {args.rounds} rounds alternating, after {inference.WARMUP_CALLS} warm-up "
        "calls; load: 1-minute load average when the figure was taken",
    ])
    work = Path(tempfile.mkdtemp(prefix="on-device-"))
    if not args.no_ascend:
        use_ascend_standins(work / "standins")
    quality: list[str] = []
    sizes: list[str] = []
    speed: list[str] = []
    for model in models:
        for bs in args.bs:
            cpu = configs(model, bs, "cpu", args)
            made = {r: common.make(cfg, ["export", "convert", "preprocess", "infer"])
                    for r, cfg in cpu.items()}
            (float_logits, float_topk), (device_logits, device_topk) = (
                topk(cpu[r], made[r]) for r in ROUTES)
            quality.append(
                f"{model:<12}{'cpu':<13}{show_topk(float_topk):>16}{show_topk(device_topk):>16}"
                f"{np.abs(device_logits - float_logits).max():>12.3g}"
                f"{float(np.mean(device_logits.argmax(1) == float_logits.argmax(1))):>9.3f}"
                f"{'':>13}{np.abs(float_logits).max():>12.3g}{load():>6}")
            if not args.no_ascend:
                ascend = configs(model, bs, ASCEND_CHIP, args)
                npu = {r: common.make(cfg, ["export", "convert", "preprocess", "infer"])
                       for r, cfg in ascend.items()}
                (npu_float, npu_float_topk), (npu_aipp, npu_aipp_topk) = (
                    topk(ascend[r], npu[r]) for r in ROUTES)
                quality.append(
                    f"{model:<12}{ASCEND_CHIP:<13}{show_topk(npu_float_topk):>16}"
                    f"{show_topk(npu_aipp_topk):>16}{np.abs(npu_aipp - npu_float).max():>12.3g}"
                    f"{float(np.mean(npu_aipp.argmax(1) == npu_float.argmax(1))):>9.3f}"
                    f"{np.abs(npu_aipp - float_logits).max():>13.3g}"
                    f"{np.abs(npu_float).max():>12.3g}{load():>6}")
            data = PreprocessedDataset(made["on_device"]["dataset"])
            crops = data.read(0, bs)
            # the chunk files as written: the crops and a 128-byte .npy header per chunk
            cache_bytes = sum(p.stat().st_size
                              for p in made["on_device"]["dataset"].glob("chunk_*.npy"))
            fed = {r: normalize(crops, cpu[r].model.preprocess.normalization()).nbytes // bs
                   for r in ROUTES}
            sizes.append(f"{model:<12}{cache_bytes / len(data):>14,.0f}{fed['host_float']:>16,}"
                         f"{fed['on_device']:>16,}{fed['on_device'] / fed['host_float']:>7.2f}")
            fps, loads, preprocess_ms = e2e_fps(cpu, made, args.rounds, work / model)
            ratio = common.mean(fps["on_device"]) / common.mean(fps["host_float"])
            per_round = [d / f for d, f in zip(fps["on_device"], fps["host_float"], strict=True)]
            speed.append(
                f"{model:<12}{bs:>4}{common.mean(fps['host_float']):>11.1f}"
                f"{common.mean(preprocess_ms['host_float']):>9.2f}"
                f"{common.mean(fps['on_device']):>12.1f}"
                f"{common.mean(preprocess_ms['on_device']):>9.2f}{ratio:>8.3f}"
                f"{f'{min(per_round):.3f}..{max(per_round):.3f}':>16}\n"
                f"   loads per round: host_float {'/'.join(loads['host_float'])}, on_device "
                f"{'/'.join(loads['on_device'])}")
    print(f"{'model':<12}{'chip':<13}{'float top1..5':>16}{'device top1..5':>16}"
          f"{'max |dlogit|':>13}{'top1 agr':>9}{'vs cpu fp32':>13}{'logit scale':>12}"
          f"{'load':>6}")
    for line in quality:
        print(line)
    print(f"{'model':<12}{'cache B/img':>14}{'float fed B/img':>16}{'uint8 fed B/img':>16}"
          f"{'ratio':>7}")
    for line in sizes:
        print(line)
    print(f"{'model':<12}{'bs':>4}{'float fps':>11}{'norm ms':>9}{'device fps':>12}"
          f"{'norm ms':>9}{'ratio':>8}{'per round':>16}")
    for line in speed:
        print(line)


if __name__ == "__main__":
    main()
