"""Several devices measured at once versus one device's figure multiplied by the device count
(what the guides do for a four-chip Ascend 310 card), side by side in one run, on this machine's
CPU: N ONNX Runtime workers with one intra-op thread each, and the PyTorch runtime beside it.

    .venv/bin/python benchmarks/multi_device.py [--bs 4] [--devices 2] [--seconds 3]

Each figure is the runner's benchmark stage method (runner.measurement.measure through
runner.device_benchmark.benchmark): warm-up >= 10 calls and 0.5 s, then >= 100 calls and --seconds,
throughput = 1000 * bs / mean(ms of one synchronous session.run), time.perf_counter_ns.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner import config, device_benchmark
from runner.backends import backend_for
from runner.models import build
from runner.stages import benchmark
from runner.stages.export import export_onnx, onnx_spec


def run_config(*overrides: str) -> config.RunConfig:
    config.register()
    with initialize_config_dir(config_dir=str(config.PROJECT_ROOT / "conf"), version_base="1.3"):
        return config.validate(compose("config", overrides=list(overrides)))


def measure(overrides: list[str], onnx_path: Path, work: Path) -> dict[str, float]:
    cfg = run_config(*overrides)
    out = work / cfg.chip.name
    out.mkdir(exist_ok=True)
    backend = backend_for(cfg.chip.runtime)
    model_path, _ = backend.convert(onnx_path, out, backend.convert_settings(cfg))
    settings = benchmark.Settings.from_config(cfg)
    results = device_benchmark.benchmark(settings.devices, settings.session, model_path,
                                         settings.batch, settings.method)
    return device_benchmark.aggregate_metrics(results, cfg.chip.runtime, cfg.bs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bs", type=int, default=4)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    ids = ",".join(str(i) for i in range(args.devices))
    common = [f"bs={args.bs}", "model.weights=random", "chip.threads=1",
              f"benchmark.min_duration_s={args.seconds}"]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        cfg = run_config(*common)
        onnx_path = work / "model.onnx"
        with torch.no_grad():
            net = build.build(cfg.model.arch, cfg.model.arch_kwargs, None, cfg.seed)
            export_onnx(net, onnx_spec(cfg), onnx_path)
        rows = []
        for runtime in ("cpu", "torch_cpu"):
            one = measure([*common, f"chip={runtime}"], onnx_path, work)
            many = measure([*common, f"chip={runtime}", f"chip.devices=[{ids}]"], onnx_path,
                           work)
            rows.append((runtime, one, many))
    print(f"AlexNet (random weights), bs={args.bs}, {args.devices} workers x 1 intra-op thread")
    print(f"{'chip':<10}{'1 device fps':>14}{f'{args.devices} x 1 device':>16}"
          f"{f'{args.devices} at once':>14}{'measured/extrapolated':>24}{'overlap':>9}")
    for runtime, one, many in rows:
        extrapolated = args.devices * one["throughput_fps"]
        print(f"{runtime:<10}{one['throughput_fps']:>14.1f}{extrapolated:>16.1f}"
              f"{many['throughput_fps']:>14.1f}{many['throughput_fps'] / extrapolated:>24.2f}"
              f"{many['benchmark_overlap']:>9.2f}")
    ort_one, torch_one = rows[0][1]["throughput_fps"], rows[1][1]["throughput_fps"]
    print(f"torch_cpu / cpu (ONNX Runtime), one device: {torch_one / ort_one:.2f}")


if __name__ == "__main__":
    main()
