"""How long `python -m runner --help` and `--cfg job` take, against the 1.5 s target.

Each command runs `--rounds` times as a fresh process (wall time around subprocess.run, so
interpreter start and every import count); the machine's 1-minute load average is printed
beside each figure, because on a shared machine a busy moment makes it slower, not the code.

    .venv/bin/python benchmarks/cli_startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.5
COMMANDS = {
    "--help": ["--help"],
    "--cfg job": ["--cfg", "job"],
    "--cfg job model=inceptionv4 bs=4": ["--cfg", "job", "model=inceptionv4", "bs=4"],
}


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    timed(["--help"])  # warm the page cache: the first start reads every module from disk
    width = 17 + max(map(len, COMMANDS)) + 2
    print(f"{'command':<{width}}{'median s':>9}{'min s':>8}{'max s':>8}  "
          f"{'load avg (1 min)':<18}target")
    missed = False
    for name, command in COMMANDS.items():
        seconds, loads = [], []
        for _ in range(args.rounds):
            seconds.append(timed(command))
            loads.append(os.getloadavg()[0])
        median = statistics.median(seconds)
        verdict = "met" if median < TARGET_S else "MISSED"
        missed |= median >= TARGET_S
        print(f"{'python -m runner ' + name:<{width}}{median:>9.2f}{min(seconds):>8.2f}"
              f"{max(seconds):>8.2f}  {f'{min(loads):.1f}..{max(loads):.1f}':<18}"
              f"< {TARGET_S} s {verdict}")
    print(f"({args.rounds} fresh processes each; {os.cpu_count()} cores)")
    raise SystemExit(1 if missed else 0)


if __name__ == "__main__":
    main()
