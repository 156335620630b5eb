"""Target 3: peak resident memory of inference + evaluation for 10N images / for N <= 1.2.

Each size runs in a fresh process that runs the runner's pipeline (export, convert and
preprocess from the cache; infer and evaluate recomputed, cache.force) on N or 10N synthetic
JPEGs and reports its peak RSS (getrusage ru_maxrss: anonymous and file-backed pages, so
memory-mapped reads count too) and its RSS before infer. The two runs go side by side in one
invocation; the caches they read are made first, in this process.

    python -m benchmarks.peak_memory --models alexnet inceptionv4 --images 200
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from benchmarks import common
from runner import pipeline
from runner.config import PROJECT_ROOT

TARGET = 1.2
STAGES = ["export", "convert", "preprocess", "infer", "evaluate"]


def overrides(model: str, bs: int, images: int, total: int, args: argparse.Namespace
              ) -> list[str]:
    # one synthetic set of `total` JPEGs, the first `images` of it
    return [*common.base_overrides(model, bs, args), f"dataset.synthetic.num_images={total}",
            f"dataset.limit={images}"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(argv: list[str]) -> None:
    """Run infer + evaluate for one size; print {"before_infer_mb", "peak_mb"} as JSON."""
    cfg = common.run_config(*argv, "cache.force=[infer,evaluate]")
    cfg.stage.stages = STAGES
    marks = {}

    def on_stage(record: pipeline.StageRecord) -> None:
        if record.name == "preprocess":
            marks["before_infer_mb"] = peak_rss_mb()

    pipeline.run(pipeline.plan(cfg), cfg.cache_dir, on_stage=on_stage)
    print(json.dumps({**marks, "peak_mb": peak_rss_mb()}))


def measure(argv: list[str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.peak_memory", "--child", *argv],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.model_arguments(parser, bs=(16,))
    parser.add_argument("--images", type=int, default=200, help="N: the small run's images")
    args = parser.parse_args()
    models = common.available(args.models)
    small, large = args.images, 10 * args.images
    common.header(f"peak RSS of infer + evaluate, {large} images / {small} images", [
        "fresh process per size; ru_maxrss (peak resident set) of the whole process, which "
        "includes the interpreter, libraries and the model",
        "before infer: ru_maxrss once export/convert/preprocess were found in the cache",
    ])
    print(f"{'model':<12}{'bs':>4}{'N':>6}{'peak MB':>9}{'10N':>7}{'peak MB':>9}{'ratio':>8}"
          f"{'growth MB':>11}  verdict")
    for model in models:
        for bs in args.bs:
            runs = {}
            for images in (small, large):
                argv = overrides(model, bs, images, large, args)
                cfg = common.run_config(*argv)
                common.make(cfg, ["export", "convert", "preprocess"])
                runs[images] = argv
            figures = {images: measure(argv) for images, argv in runs.items()}
            ratio = figures[large]["peak_mb"] / figures[small]["peak_mb"]
            growth = figures[large]["peak_mb"] - figures[small]["peak_mb"]
            print(f"{model:<12}{bs:>4}{small:>6}{figures[small]['peak_mb']:>9.0f}{large:>7}"
                  f"{figures[large]['peak_mb']:>9.0f}{ratio:>8.3f}{growth:>11.0f}  "
                  f"{common.verdict(ratio, TARGET, higher_is_better=False)}")
            for images in (small, large):
                print(f"   {images} images: before infer {figures[images]['before_infer_mb']:.0f} "
                      f"MB, peak {figures[images]['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
