"""Keys are settings: each stage's cache key is its settings object, so changing a setting a stage
reads changes its key, and changing one it does not read leaves its key as it was. Checked for
every stage against a table of overrides; computing the settings has no side effects."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from runner.config import STAGE_NAMES
from runner.settings import key_settings
from runner.stages import stage_module
from tests.conftest import run_config

BASE = ("model=resnet18", "model.weights=random", "dataset=synthetic", "bs=4")

# override -> the stages whose key it changes (every other stage's key must stay the same)
READS: dict[str, set[str]] = {
    "bs=8": {"infer", "benchmark", "e2e"},  # ONNX Runtime's optimized graph does not depend on bs
    "seed=1": {"export", "preprocess", "reference", "benchmark", "score"},  # weights, data, input
    "model.opset=13": {"export"},
    "model.input_name=x": {"export"},
    "model.output_name=y": {"export"},
    "+model.arch_kwargs.num_classes=10": {"export", "reference"},
    "model.preprocess.resize=300": {"preprocess"},
    "model.preprocess.crop=200": {"export", "preprocess", "benchmark"},  # the input size
    "model.preprocess.mean=[0.5,0.5,0.5]": {"infer", "reference", "e2e"},
    "model.preprocess.std=[0.5,0.5,0.5]": {"infer", "reference", "e2e"},
    # the same cached crops; the fed tensor, the exported input and the benchmark's input change
    "model.preprocess.layout=NHWC": {"export", "infer", "reference", "benchmark", "e2e"},
    # the same cached crops and reference; the model's input and what is fed change
    "model.preprocess.on_device=true": {"export", "infer", "benchmark", "e2e"},
    "model.class_offset=1": {"preprocess", "parity", "evaluate", "score"},
    "model.num_classes=1001": {"preprocess", "evaluate", "score"},
    "chip.threads=1": {"infer", "benchmark", "e2e"},
    "chip.devices=[0,1]": {"infer", "benchmark", "e2e"},
    "preprocess.chunk_size=8": {"preprocess"},
    "infer.result_format=txt": {"infer"},
    "parity.worst=3": {"parity"},
    "parity.tolerance.fp32.max_abs_diff=0.01": {"parity"},
    "parity.tolerance.fp16.max_abs_diff=0.5": set(),  # the chip runs fp32
    "parity.tolerance.bf16.max_abs_diff=0.9": set(),
    "parity.tolerance.int8.max_abs_diff=0.9": set(),
    # int8's calibration: read by convert only where the chip runs int8 (test below)
    "chip.calibration.num_images=10": set(),
    "chip.calibration.method=Entropy": set(),
    "benchmark.min_iters=7": {"benchmark"},
    "benchmark.input=zero": {"benchmark"},
    "benchmark.max_cv=0.1": {"benchmark"},  # the verdict is part of the measurement
    "e2e.images=10": {"e2e"},
    "e2e.prefetch=2": {"e2e"},  # the default on the CPU is the serial pass (0)
    "e2e.prefetch=0": set(),
    "dataset.limit=4": {"preprocess"},
    "dataset.on_mismatch=skip": {"preprocess", "score"},
    "dataset.synthetic.num_images=9": {"preprocess", "score"},
    "score.format=txt": set(),  # resolves to the one format present: what auto found
    # what a stage reads that cannot change its output (runtime_only)
    "preprocess.workers=1": set(),
    "benchmark.busy_threshold=0.5": {"benchmark"},  # part of the method's record
    "security.extra_arch_prefixes=[mypkg]": set(),
    "mlflow.experiment=other": set(),
    "cache.force=[all]": set(),
    "cache.reuse_measurements=true": set(),
    "cache.verify=full": set(),
    "benchmark.require_valid=true": set(),  # judged after the figures are recorded
}


@pytest.fixture(scope="module")
def results_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ais_bench result folder, so stage=score's settings can be made."""
    folder = tmp_path_factory.mktemp("results")
    np.savetxt(folder / "synthetic_00000001_0.txt", np.zeros((1, 1000)), fmt="%f", newline=" ")
    return folder


def keys(results: Path, tmp: Path, *overrides: str) -> dict[str, str]:
    cfg = run_config(*BASE, f"paths.cache_dir={tmp}", f"score.results={results}", *overrides)
    return {name: json.dumps(key_settings(stage_module(name).Settings.from_config(cfg)),
                             sort_keys=True) for name in STAGE_NAMES}


@pytest.mark.parametrize("override", list(READS))
def test_a_setting_changes_exactly_the_keys_of_the_stages_that_read_it(
        override: str, results_folder: Path, tmp_path: Path) -> None:
    base = keys(results_folder, tmp_path)
    changed = keys(results_folder, tmp_path, override)
    differ = {name for name in STAGE_NAMES if changed[name] != base[name]}
    assert differ == READS[override]


def test_keys_name_every_stage_and_have_no_side_effects(results_folder: Path,
                                                       tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = keys(results_folder, cache)
    assert set(first) == set(STAGE_NAMES)
    assert keys(results_folder, cache) == first  # settings are values: computed alike twice
    # the synthetic dataset is generated by preprocess when it runs, not by computing a key
    assert not cache.exists()


def test_where_things_live_is_not_part_of_any_key(results_folder: Path, tmp_path: Path) -> None:
    # the cache folder (downloads, locks, the synthetic dataset's folder) moves, keys stay
    assert keys(results_folder, tmp_path / "a") == keys(results_folder, tmp_path / "b")


def test_the_torch_backend_keys_its_sessions_and_its_module(results_folder: Path,
                                                           tmp_path: Path) -> None:
    base = keys(results_folder, tmp_path, "chip=torch_cpu")
    fp16 = keys(results_folder, tmp_path, "chip=torch_cpu", "chip.precision=fp16")
    sessions = {"infer", "benchmark", "e2e"}  # the stages that open sessions
    assert {n for n in STAGE_NAMES if fp16[n] != base[n]} == {*sessions, "parity"}
    bf16 = keys(results_folder, tmp_path, "chip=torch_cpu", "chip.precision=bf16")
    assert {n for n in STAGE_NAMES if bf16[n] != base[n]} == {*sessions, "parity"}
    assert bf16["parity"] != fp16["parity"]  # its own tolerance
    looser = keys(results_folder, tmp_path, "chip=torch_cpu", "chip.precision=bf16",
                  "parity.tolerance.bf16.max_abs_diff=0.9")
    assert {n for n in STAGE_NAMES if looser[n] != bf16[n]} == {"parity"}
    for option in ("chip.channels_last=true", "chip.compile=true"):
        changed = keys(results_folder, tmp_path, "chip=torch_cpu", option)
        assert {n for n in STAGE_NAMES if changed[n] != base[n]} == sessions
    # the saved module is made from the model spec: it changes with the weights' seed
    seeded = keys(results_folder, tmp_path, "chip=torch_cpu", "seed=3")
    assert seeded["convert"] != base["convert"]
    cpu = keys(results_folder, tmp_path)
    assert cpu["convert"] != base["convert"] and cpu["infer"] != base["infer"]


def test_cuda_options_reach_the_sessions_only(results_folder: Path, tmp_path: Path) -> None:
    # computing keys needs no GPU: chip=cuda's settings are values like any other
    base = keys(results_folder, tmp_path, "chip=cuda")
    for options in (("chip.cuda_graphs=true",), ("chip.compile=true",),
                    ("chip.cuda_graphs=true", "chip.compile=true", "chip.precision=fp16")):
        changed = keys(results_folder, tmp_path, "chip=cuda", *options)
        expected = {"infer", "benchmark", "e2e"} | (
            {"parity"} if "chip.precision=fp16" in options else set())
        assert {n for n in STAGE_NAMES if changed[n] != base[n]} == expected
    # torch.compile's cache lives under paths.cache_dir: moving it changes no key
    assert (keys(results_folder, tmp_path / "a", "chip=cuda", "chip.compile=true")
            == keys(results_folder, tmp_path / "b", "chip=cuda", "chip.compile=true"))


def test_an_ascend_om_is_made_per_batch_size_unless_dynamic(results_folder: Path,
                                                            tmp_path: Path) -> None:
    def convert_key(*overrides: str) -> str:
        return keys(results_folder, tmp_path, "chip=ascend310p3", *overrides)["convert"]

    assert convert_key("bs=8") != convert_key()
    assert convert_key("chip.threads=1") == convert_key()
    dynamic = "chip.dynamic_batch_sizes=[4,8]"
    assert convert_key(dynamic, "bs=8") == convert_key(dynamic)


def test_a_real_dataset_is_keyed_by_each_image_size_and_mtime_and_the_label_file(
        results_folder: Path, tmp_path: Path, generated_images: Path) -> None:
    root = tmp_path / "dataset"
    shutil.copytree(generated_images, root)
    dataset = ("dataset=imagenet", f"dataset.root={root}")

    def preprocess_key() -> str:
        return keys(results_folder, tmp_path / "cache", *dataset)["preprocess"]

    first = preprocess_key()
    assert preprocess_key() == first  # listing twice changes nothing
    image = sorted((root / "val").iterdir())[3]
    status = image.stat()
    os.utime(image, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    touched = preprocess_key()
    assert touched != first  # same bytes, newer: a replaced file can keep its size
    image.write_bytes(image.read_bytes() + b"\0")  # a JPEG with trailing bytes: other content
    os.utime(image, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    resized = preprocess_key()
    assert resized not in (first, touched)  # the mtime as touched, another size
    labels = root / "val_label.txt"
    lines = labels.read_text().splitlines()
    name, label = lines[0].split()
    labels.write_text("\n".join([f"{name} {(int(label) + 1) % 1000}", *lines[1:]]) + "\n")
    assert preprocess_key() != resized


def test_int8_keys_its_convert_by_the_calibration_and_its_images(results_folder: Path,
                                                                  tmp_path: Path) -> None:
    base = keys(results_folder, tmp_path)
    int8 = keys(results_folder, tmp_path, "chip.precision=int8")
    sessions = {"infer", "benchmark", "e2e"}
    # the quantized model, the sessions that run it and parity's int8 tolerance
    assert {n for n in STAGE_NAMES if int8[n] != base[n]} == {"convert", *sessions, "parity"}
    for option in ("chip.calibration.num_images=10", "chip.calibration.method=Entropy",
                   "chip.calibration.method=Percentile"):
        changed = keys(results_folder, tmp_path, "chip.precision=int8", option)
        # a new model: every stage that reads it (its digest) is another entry, by its input
        assert {n for n in STAGE_NAMES if changed[n] != int8[n]} == {"convert"}, option
    # the calibration images are the run's dataset: another dataset, another int8 model
    for option in ("dataset.synthetic.num_images=9", "seed=1", "model.preprocess.resize=300",
                   "model.preprocess.mean=[0.5,0.5,0.5]"):
        fp32_changed = keys(results_folder, tmp_path, option)
        changed = keys(results_folder, tmp_path, "chip.precision=int8", option)
        assert changed["convert"] != int8["convert"], option
        assert fp32_changed["convert"] == base["convert"], option
    tolerance = keys(results_folder, tmp_path, "chip.precision=int8",
                     "parity.tolerance.int8.min_top1_agreement=0.5")
    assert {n for n in STAGE_NAMES if tolerance[n] != int8[n]} == {"parity"}
