"""How often `python -m runner compare` cries wolf, and how often it catches a real slowdown.

False alarms: N pairs of identical runs back to back (the CLI, one fresh process each,
stage=performance: export and convert from the cache, the benchmark measured anew with the
default benchmark.* settings users run, unless --quick), each pair compared; a pair counts when
every figure is SAME (INVALID rows, a busy machine's, are counted apart: the rule does not judge
them), and each false alarm names the figure and verdict behind it. Detection: N pairs whose
candidate is a test build 10% slower (benchmarks/slowed/sitecustomize.py on its PYTHONPATH: each
InferenceSession.run sleeps a ninth of its own duration, so throughput is 0.90x; --slower threads:
half the baseline's intra-op threads instead), counted when throughput_fps is REGRESSED.

Side by side in one run (--repeats both, the default): each pair is made twice in a row, its
runs' repeats each in a fresh process (benchmark.isolate_repeats=true, the default) and back to
back in one process (false), the order alternating from pair to pair; every pair is judged by
each of compare's kinds of noise (one repeat's spread, the default, and the standard error of
the figure) on the same runs, so the rates compare without the machine's hour between them. The
rates print with the load average (os.getloadavg) before and after each half.

    python -m benchmarks.compare_noise --pairs 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchmarks import common
from runner import compare
from runner.config import PROJECT_ROOT

ALARMS = (compare.REGRESSED, compare.IMPROVED, compare.UNMATCHED)


SLOWED = Path(__file__).parent / "slowed"  # the 10% slower test build's sitecustomize.py


REPEATS = {"fresh processes": "benchmark.isolate_repeats=true",
           "one process": "benchmark.isolate_repeats=false"}


def one_run(work: Path, args: argparse.Namespace, threads: int, repeats: str,
            slowed: bool = False) -> str:
    """One CLI run into the store under `work`, its repeats as `repeats` (a key of REPEATS;
    `slowed`: the 10% slower test build); its run id."""
    db = work / "mlflow.db"
    command = [sys.executable, "-m", "runner", f"model={args.model}", f"bs={args.bs}",
               "dataset=synthetic", "model.weights=random", "stage=performance",
               *args.benchmark, REPEATS[repeats], f"chip.threads={threads}",
               f"paths.cache_dir={args.cache_dir}",
               f"mlflow.tracking_uri=sqlite:///{db}", f"mlflow.artifact_location={work}/mlruns",
               f"hydra.run.dir={work}/runs/${{now:%H-%M-%S-%f}}"]
    env = dict(os.environ)
    if slowed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SLOWED), env.get("PYTHONPATH"))
                                            if p)
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"runner failed ({done.returncode}): {done.stderr[-2000:]}")
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("runner")
    assert experiment is not None
    (latest,) = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"],
                                   max_results=1)
    return latest.info.run_id


# every pair is judged by each kind of noise (runner/compare.py Rule), the default first
RULES = {kind: compare.Rule(noise=kind) for kind in compare.NOISE_KINDS}


def pair(work: Path, args: argparse.Namespace, threads: tuple[int, int], repeats: str,
         slowed: bool = False) -> dict[str, compare.Comparison]:
    """One pair of runs, judged by each rule of RULES."""
    baseline = one_run(work, args, threads[0], repeats)
    candidate = one_run(work, args, threads[1], repeats, slowed)
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    sides = (compare.load_side(baseline, "baseline", client),
             compare.load_side(candidate, "candidate", client))
    return {kind: compare.compare(*sides, rule) for kind, rule in RULES.items()}


class Tally:
    """One rule's counts over one half's pairs."""

    def __init__(self) -> None:
        self.same = self.invalid = self.alarms = self.caught = 0
        self.behind: Counter[str] = Counter()  # "throughput_fps IMPROVED" -> pairs

    def identical(self, result: compare.Comparison) -> str:
        counts = result.counts()
        self.same += counts[compare.SAME] == sum(counts.values())
        self.invalid += counts[compare.INVALID] > 0
        wrong = [r for r in result.rows if r.verdict in ALARMS]
        self.alarms += bool(wrong)
        self.behind.update({f"{r.figure} {r.verdict}" for r in wrong})
        why = "; ".join(f"{r.figure} {r.verdict} {r.change} (band {r.band})" for r in wrong)
        return compare_line(counts) + (f", false alarm: {why}" if why else "")

    def slower(self, result: compare.Comparison) -> str:
        (row,) = [r for r in result.rows if r.figure == "throughput_fps"]
        self.caught += row.verdict == compare.REGRESSED
        self.invalid += row.verdict == compare.INVALID
        return f"throughput {row.change} (band {row.band}) {row.verdict}"


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20, help="pairs of each kind (N)")
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--bs", type=int, default=4)
    parser.add_argument("--quick", action="store_true",
                        help="debug=quick_benchmark with benchmark.min_iters=20 (shorter, "
                        "noisier) instead of the default benchmark.* settings")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                        help="every run's chip.threads (--slower threads: the candidate half)")
    parser.add_argument("--slower", choices=("sleep", "threads"), default="sleep",
                        help="the slower candidate: the 10%% slower test build (sleep) or half "
                        "the threads")
    parser.add_argument("--cache-dir", default=str(PROJECT_ROOT / "outputs" / "cache"))
    parser.add_argument("--repeats", choices=(*REPEATS, "both"), default="both",
                        help="how each run's repeats run: each in a fresh process, back to back "
                        "in one process, or both side by side (each pair made both ways)")
    args = parser.parse_args()
    if args.pairs < 1 or args.threads < 2:
        raise SystemExit("--pairs must be >= 1 and --threads >= 2 (half of it is the candidate's)")
    half = args.threads // 2
    args.benchmark = ["debug=quick_benchmark", "benchmark.min_iters=20"] if args.quick else []
    ways = list(REPEATS) if args.repeats == "both" else [args.repeats]
    common.header(f"compare's false-alarm and detection rates, {args.pairs} pairs each", [
        f"{args.model} bs {args.bs}, dataset=synthetic, model.weights=random, stage=performance, "
        f"{' '.join(args.benchmark) or 'the default benchmark.* settings'}; one CLI process a run",
        "repeats: " + "; ".join(f"{way} ({REPEATS[way]})" for way in ways)
        + (", each pair made both ways in a row, the order alternating" if len(ways) > 1 else ""),
        *(f"rule {kind}: {rule.text()}" for kind, rule in RULES.items()),
        f"identical: chip.threads={args.threads} twice; slower: "
        + (f"chip.threads={args.threads} then {half}" if args.slower == "threads" else
           "the candidate a test build 10% slower (each InferenceSession.run sleeps 1/9 of its "
           "duration: 0.90x throughput)"),
    ])
    common.make(common.run_config(f"model={args.model}", f"bs={args.bs}", "dataset=synthetic",
                                  "model.weights=random", f"paths.cache_dir={args.cache_dir}"),
                ["export", "convert"])  # made once, not in the first pair's time
    slow = args.slower == "sleep"
    # each half: the two runs' threads, whether the candidate is the slowed build, and how a
    # pair's comparison is tallied
    halves = {"identical": ((args.threads, args.threads), False, Tally.identical),
              "slower": ((args.threads, args.threads if slow else half), slow, Tally.slower)}
    tallies = {name: {(way, kind): Tally() for way in ways for kind in RULES} for name in halves}
    loads = {}
    with tempfile.TemporaryDirectory(prefix="compare-noise-") as folder:
        work = Path(folder)
        for name, (threads, slowed, tally) in halves.items():
            before = load()
            for n in range(args.pairs):
                for way in (ways if n % 2 == 0 else ways[::-1]):
                    judged = pair(work, args, threads, way, slowed)
                    lines = "; ".join(f"{kind}: {tally(tallies[name][way, kind], result)}"
                                      for kind, result in judged.items())
                    print(f"  {name} pair {n + 1}, repeats in {way}: {lines}  load {load()}",
                          flush=True)
            loads[name] = f"{before} -> {load()}"
    for way in ways:
        for kind in RULES:
            same, fast = tallies["identical"][way, kind], tallies["slower"][way, kind]
            name = f"repeats in {way}, rule {kind}"
            print(f"{name}: false alarms {same.alarms}/{args.pairs} identical pairs "
                  f"({same.alarms / args.pairs:.0%}) had a figure IMPROVED/REGRESSED/UNMATCHED"
                  + (f" ({', '.join(f'{k} in {n}' for k, n in same.behind.most_common())})"
                     if same.behind else "")
                  + f"; SAME on every figure {same.same}/{args.pairs} "
                  f"({same.same / args.pairs:.0%}); pairs with INVALID rows {same.invalid}; load "
                  f"average (1/5/15 min) {loads['identical']}")
            print(f"{name}: detection: throughput REGRESSED in {fast.caught}/{args.pairs} "
                  f"slower pairs ({fast.caught / args.pairs:.0%}); INVALID {fast.invalid}; load "
                  f"average {loads['slower']}")


def compare_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {v}" for v, n in counts.items() if n)


if __name__ == "__main__":
    main()
