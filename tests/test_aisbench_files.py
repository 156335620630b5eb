"""ais_bench result files: names and formats as ais_bench writes them, and `stage=score` giving
the in-memory scores and the guides' JSON for a folder of them (write, then score)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from runner.accuracy import topk_accuracy
from runner.artifacts import guide_json, load_logits
from runner.data import aisbench_files
from runner.errors import ConfigError, ResultFilesError
from runner.stages import score
from tests.conftest import Workspace, run_config


def guide_script_json(folder: Path, label_file: Path) -> dict:
    """The guides' accuracy script (imagenet_acc_eval.py / vision_metric_ImageNet.py), in short."""
    gt = {}
    for line in label_file.read_text().splitlines():
        name, label = line.split(" ")
        gt[name.split(".")[0]] = label
    count, n_labels, hits = 0, 0, np.zeros(5)
    for file_name in os.listdir(folder):
        if file_name.endswith("summary.json"):
            continue
        count += 1
        temp = file_name.split(".")[0]
        image = temp[: temp.rfind("_")]
        with open(folder / file_name) as stream:
            parts = stream.readline().strip().split(" ")
        prediction = np.array([np.float32(p) for p in parts], dtype=np.float32)
        n_labels = len(parts)
        real = int(gt[image]) + 1 if n_labels == 1001 else int(gt[image])
        order = np.argsort(-prediction)
        for i in range(min(len(order), 5)):
            if str(real) == str(order[i]):
                hits[i] += 1
                break
    accuracy = np.cumsum(hits) / count
    return {"title": "Overall statistical evaluation", "value": [
        {"key": "Number of images", "value": str(count)},
        {"key": "Number of classes", "value": str(n_labels)},
        *({"key": f"Top{i + 1} accuracy", "value": str(round(accuracy[i] * 100, 2)) + "%"}
          for i in range(5)),
    ]}


def as_txt_holds_them(logits: np.ndarray) -> np.ndarray:
    """What a TXT file gives back: each value printed with "%f" (6 decimals), read as float32."""
    return np.array([[float(f"{v:f}") for v in row] for row in np.atleast_2d(logits)],
                    dtype=np.float64).astype(np.float32).reshape(logits.shape)


def test_names_follow_ais_bench() -> None:
    assert aisbench_files.result_name("ILSVRC2012_val_00000001.JPEG", "txt") == (
        "ILSVRC2012_val_00000001_0.txt")
    name = aisbench_files.result_name("n01440764_tench.JPEG", "npy")
    assert name == "n01440764_tench_0.npy"
    # and the guides' scripts get the image back: stem minus its last _N
    temp = name.split(".")[0]
    assert temp[: temp.rfind("_")] == "n01440764_tench"


def test_files_are_written_as_ais_bench_writes_them(tmp_path: Path) -> None:
    row = (np.random.default_rng(0).standard_normal(1000) * 5).astype(np.float32)
    for fmt in ("txt", "npy", "bin"):
        aisbench_files.write_result(tmp_path / f"a_0.{fmt}", row, fmt)
    text = (tmp_path / "a_0.txt").read_text()
    # ais_bench's save_data_to_files: each value then a space, and a line break after the row
    assert text.count("\n") == 1 and text.endswith(" \n")
    fields = text[:-1].split(" ")[:-1]
    assert len(fields) == 1000 and all(re.fullmatch(r"-?\d+\.\d{6}", f) for f in fields)
    assert fields[0] == f"{row[0]:f}"
    npy = np.load(tmp_path / "a_0.npy")
    assert npy.dtype == np.float32 and npy.shape == (1, 1000)
    assert (tmp_path / "a_0.bin").read_bytes() == row.tobytes()
    assert not list(tmp_path.glob(".*"))  # written by rename, no leftovers
    for fmt, expected in (("npy", row), ("bin", row), ("txt", as_txt_holds_them(row))):
        assert np.array_equal(aisbench_files.read_result(tmp_path / f"a_0.{fmt}", 1000), expected)


def _dataset(tmp_path: Path, count: int = 42, classes: int = 1001, offset: int = 1):
    """Logits of a real model's scale and labels that land at every rank 0..6 (top-k spread)."""
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((count, classes)) * 4).astype(np.float32)
    ranked = np.argsort(-logits, axis=1, kind="stable")
    labels = []
    for i in range(count):
        candidates = [c for c in ranked[i, i % 7 :] if c >= offset]
        labels.append(int(candidates[0]) - offset)
    names = [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(count)]
    root = tmp_path / "labels"
    root.mkdir()
    (root / "val_label.txt").write_text("".join(f"{n} {y}\n" for n, y in zip(names, labels,
                                                                             strict=True)))
    return logits, np.array(labels), names, root


def _score(results: Path, root: Path, out: Path, *overrides: str):
    cfg = run_config("stage=score", "model=inceptionv4", f"score.results={results}",
                     "dataset=imagenet", f"dataset.root={root}", *overrides)
    out.mkdir(parents=True, exist_ok=True)
    return score.run(score.Settings.from_config(cfg), {}, out)


@pytest.mark.parametrize("fmt", ["txt", "npy", "bin"])
def test_write_then_score_equals_the_in_memory_scores(fmt: str, tmp_path: Path) -> None:
    logits, labels, names, root = _dataset(tmp_path)
    results = tmp_path / "results"
    assert aisbench_files.write_results(results, names, logits, fmt) == len(names)
    (results / "_summary.json").write_text("{}")  # ais_bench's summary is ignored
    output = _score(results, root, tmp_path / "out")

    # TXT keeps ais_bench's 6 decimals: score what the files hold
    held = as_txt_holds_them(logits) if fmt == "txt" else logits
    expected = topk_accuracy(held, labels, class_offset=1)
    assert expected[0] < expected[4] < 100  # a spread, not all-or-nothing
    assert [output.metrics[f"top{k}"] for k in range(1, 6)] == expected
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written == guide_json(expected, len(names), 1001)
    if fmt == "txt":  # the guides' own script on the same folder gives the same JSON
        (results / "_summary.json").unlink()
        assert written == guide_script_json(results, root / "val_label.txt")
    assert output.info["format"] == fmt and output.metrics["num_images"] == len(names)


def test_mismatches_are_named_and_skip_scores_the_labelled(tmp_path: Path) -> None:
    logits, labels, names, root = _dataset(tmp_path)
    results = tmp_path / "results"
    aisbench_files.write_results(results, names[:-2], logits[:-2], "npy")
    aisbench_files.write_result(results / "stray_image_0.npy", logits[0], "npy")
    with pytest.raises(ResultFilesError, match=r"1 result files without a label \(e\.g\. "
                       r"stray_image_0\.npy\) and 2 labelled images without a result file"):
        _score(results, root, tmp_path / "a")
    output = _score(results, root, tmp_path / "b", "dataset.on_mismatch=skip")
    assert [output.metrics[f"top{k}"] for k in range(1, 6)] == topk_accuracy(
        logits[:-2], labels[:-2], class_offset=1)


def test_wrong_class_count_mixed_formats_and_missing_folder_are_refused(tmp_path: Path) -> None:
    logits, _, names, root = _dataset(tmp_path, count=3)
    results = tmp_path / "results"
    aisbench_files.write_results(results, names, logits, "bin")
    with pytest.raises(ResultFilesError, match=r"_0\.bin holds 1001 values read as float32, "
                       r"but model\.num_classes=1000"):
        _score(results, root, tmp_path / "a", "model=alexnet")
    aisbench_files.write_result(results / "extra_0.txt", logits[0], "txt")
    with pytest.raises(ResultFilesError, match=r"holds bin, txt result files: pass score\.format"):
        _score(results, root, tmp_path / "b")
    with pytest.raises(ResultFilesError, match=r"nowhere does not exist"):
        _score(tmp_path / "nowhere", root, tmp_path / "c")


@pytest.mark.slow
def test_infer_files_scored_by_the_cli_equal_evaluate(workspace: Workspace,
                                                      tmp_path: Path) -> None:
    common = ["model=alexnet", "dataset=synthetic", "dataset.synthetic.num_images=24",
              "model.weights=random"]
    workspace.run("stage=accuracy", "bs=8", "infer.result_format=npy", *common)
    (run,) = workspace.runs()
    infer_dir = workspace.entry("infer", run)
    results = infer_dir / "results"
    assert len(list(results.glob("synthetic_*_0.npy"))) == 24

    workspace.run("stage=score", f"score.results={results}", *common)
    scored = workspace.runs()[1]
    assert scored.info.status == "FINISHED" and workspace.cache_states(scored)["score"] == "miss"
    for k in range(1, 6):
        assert scored.data.metrics[f"top{k}"] == run.data.metrics[f"top{k}"]
    evaluate_json = workspace.entry("evaluate", run)
    score_json = workspace.entry("score", scored)
    assert (score_json / "metrics.json").read_text() == (
        evaluate_json / "metrics.json").read_text()

    # labels that the model's own top-1 hits for every other image: a non-trivial score,
    # checked against torch.topk on the in-memory logits
    logits = torch.from_numpy(load_logits(infer_dir / "logits.json"))
    names = sorted(p.name.replace("_0.npy", ".JPEG") for p in results.iterdir())
    top1 = logits.argmax(1)
    labels = [int(top1[i]) if i % 2 == 0 else (int(top1[i]) + 1) % 1000 for i in range(24)]
    (tmp_path / "val_label.txt").write_text(
        "".join(f"{n} {y}\n" for n, y in zip(names, labels, strict=True)))
    workspace.run("stage=score", f"score.results={results}", f"dataset.root={tmp_path}",
                  "model=alexnet")
    custom = workspace.runs()[2]
    top5 = logits.topk(5, dim=1).indices
    for k in (1, 5):
        expected = 100.0 * (top5[:, :k] == torch.tensor(labels)[:, None]).any(1).double().mean()
        assert custom.data.metrics[f"top{k}"] == pytest.approx(expected.item(), abs=1e-9)
    assert custom.data.metrics["top1"] == 50.0


def test_score_and_result_format_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"infer\.result_format='xml' is not one of none, txt"):
        run_config("infer.result_format=xml")
    with pytest.raises(ConfigError, match=r"score\.format='csv'"):
        run_config("score.format=csv")
    with pytest.raises(ConfigError, match=r"score\.results is not set"):
        score.Settings.from_config(run_config("stage=score"))
