"""`dataset.layout`: ImageNet as people keep it.

The guides' `val/*.JPEG` + `val_label.txt` and torchvision's `val/<wnid>/*.JPEG` holding the same
JPEGs (real files, made by the project's generator) are the same dataset: the same images in the
same order under the same names and labels, the same preprocess cache key and the same top-1..5.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from runner.config import DatasetConfig, ModelConfig
from runner.data import dataset
from runner.data.dataset import DatasetSpec
from runner.errors import ConfigError, DatasetError
from runner.pipeline import PlannedStage, stage_key
from runner.stages import preprocess
from runner.stages import score as score_stage
from tests.conftest import Workspace, run_config

WNIDS = dataset.WNIDS_FILE.read_text().split()
TOPK = tuple(f"top{k}" for k in range(1, 6))


def _one_line(error: pytest.ExceptionInfo[Exception]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def guide_labels(root: Path) -> dict[str, int]:
    return {name: int(label) for name, label in
            (line.split() for line in (root / "val_label.txt").read_text().splitlines())}


def as_folders(guide: Path, target: Path, keep: tuple[str, ...] = ()) -> Path:
    """A copy of a guide-layout dataset as `val/<wnid>/<file name>`, each image in the folder of
    its label's wnid in the standard order. shutil.copy2 keeps the mtimes (as cp -p, rsync -a),
    which the fingerprint trusts with the size. `keep`: other root files to copy too."""
    for name, label in guide_labels(guide).items():
        folder = target / "val" / WNIDS[label]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(guide / "val" / name, folder / name)
    for name in keep:
        shutil.copy2(guide / name, target / name)
    return target


@pytest.fixture
def layouts(tmp_path: Path, generated_images: Path) -> tuple[Path, Path]:
    """The 20 generated JPEGs in the guide layout and, the same files, in the folders layout."""
    guide = tmp_path / "guide"
    shutil.copytree(generated_images, guide)  # copy2: mtimes kept
    return guide, as_folders(guide, tmp_path / "folders")


def _cfg(root: Path, **kwargs: object) -> DatasetConfig:
    return DatasetConfig(name="imagenet", root=str(root), **kwargs)  # type: ignore[arg-type]


def _listing(root: Path, **kwargs: object) -> list[tuple[str, int]]:
    return [(s.name, s.label) for s in dataset.list_samples(_cfg(root, **kwargs))]


def preprocess_key(root: Path, cache: Path, *overrides: str) -> str:
    """The preprocess stage's cache key, as the pipeline computes it."""
    cfg = run_config("dataset=imagenet", f"dataset.root={root}", f"paths.cache_dir={cache}",
                     *overrides)
    planned = PlannedStage("preprocess", preprocess, preprocess.Settings.from_config(cfg), False)
    return stage_key(planned, {})


# --- auto ---------------------------------------------------------------------------------------


def test_auto_tells_the_layouts_apart_and_logs_which_in_one_line(
        layouts: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    guide, folders = layouts
    for root, name, why in ((guide, "guide", "val/ holds 20 images directly, val_label.txt is "
                                               "there"),
                            (folders, "folders", "val/ holds .* class folders")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="runner"):
            assert dataset.resolve_layout(root, "val", "val_label.txt", "auto").name == name
        (line,) = [r.getMessage() for r in caplog.records if "dataset.layout" in r.getMessage()]
        assert re.fullmatch(rf"dataset.layout=auto: {root} is the {name} layout \({why}.*\)",
                            line), line


def test_the_same_images_list_alike_with_the_same_preprocess_key(
        layouts: tuple[Path, Path], tmp_path: Path) -> None:
    guide, folders = layouts
    listed = _listing(guide)
    assert listed == _listing(folders) == _listing(folders, layout="folders")
    assert listed == _listing(guide, layout="guide")
    # names are the file names (reports name images by them), in file-name order
    assert [name for name, _ in listed] == sorted(guide_labels(guide))
    assert dict(listed) == guide_labels(guide)
    samples = dataset.list_samples(_cfg(folders))
    assert all(s.path.parent.name == WNIDS[s.label] for s in samples)  # read from the folders
    assert preprocess_key(guide, tmp_path / "c") == preprocess_key(folders, tmp_path / "c")
    limited = ("dataset.limit=7",)
    assert preprocess_key(guide, tmp_path / "c", *limited) == \
        preprocess_key(folders, tmp_path / "c", *limited)
    # the key is still the images' content: one touched image changes it in either layout
    image = next((folders / "val").glob("*/*.JPEG"))
    status = image.stat()
    before = preprocess_key(folders, tmp_path / "c")
    os.utime(image, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    assert preprocess_key(folders, tmp_path / "c") != before


def test_score_reads_the_same_labels_from_either_layout(layouts: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    guide, folders = layouts
    results = tmp_path / "results"
    results.mkdir()
    (results / "synthetic_00000001_0.txt").write_text(" ".join(["0"] * 1000))

    def settings(root: Path) -> score_stage.Settings:
        return score_stage.Settings.from_config(run_config(
            "dataset=imagenet", f"dataset.root={root}", f"score.results={results}",
            f"paths.cache_dir={tmp_path / 'c'}", "stage=score", "dataset.on_mismatch=skip"))

    by_guide, by_folders = settings(guide), settings(folders)
    assert by_guide.dataset.labels_by_name() == by_folders.dataset.labels_by_name() == \
        guide_labels(guide)
    assert by_guide.labels_digest == by_folders.labels_digest
    scored = []
    for spec, name in ((by_guide, "g"), (by_folders, "f")):
        (tmp_path / name).mkdir()
        scored.append(score_stage.run(spec, {}, tmp_path / name).metrics)
    assert scored[0] == scored[1] and scored[0]["num_images"] == 1


# --- folders: the standard class order, never a renumbering -------------------------------------


def test_a_subset_of_the_class_folders_keeps_the_standard_labels(
        generated_images: Path, tmp_path: Path) -> None:
    root = tmp_path / "subset"
    image = sorted((generated_images / "val").iterdir())
    for index, (wnid, label) in enumerate((("n01530575", 10), ("n04562935", 900),
                                           ("n15075141", 999))):
        assert WNIDS.index(wnid) == label
        (root / "val" / wnid).mkdir(parents=True)
        shutil.copy2(image[index], root / "val" / wnid / image[index].name)
    assert [label for _, label in _listing(root)] == [10, 900, 999]
    # a 1001-class model with the background first: labels 0..999 still fit
    background = ModelConfig(name="inceptionv4", arch="torchvision.models.alexnet",
                             num_classes=1001, class_offset=1)
    assert len(dataset.list_samples(_cfg(root), background)) == 3
    ten = ModelConfig(name="tiny", arch="torchvision.models.alexnet", num_classes=10)
    with pytest.raises(DatasetError) as error:
        dataset.list_samples(_cfg(root), ten)
    assert re.search(r"3 images in class folders outside 0..9, .*n01530575/ \(class 10\)",
                     _one_line(error))


def test_an_unknown_wnid_folder_is_refused_naming_it(layouts: tuple[Path, Path]) -> None:
    _, folders = layouts
    shutil.copytree(next((folders / "val").iterdir()), folders / "val" / "n99999999")
    with pytest.raises(DatasetError) as error:
        dataset.list_samples(_cfg(folders))
    assert re.fullmatch(
        rf"folder {folders}/val/n99999999 is not a class: n99999999 is not a wnid of the "
        r"ImageNet-1k wnids; in dataset.layout=folders each folder of val/ is one class named "
        r"by its wnid \(e.g. n01440764\): remove or rename it", _one_line(error))


def test_a_root_class_list_is_the_order_when_there_is_one(layouts: tuple[Path, Path]) -> None:
    guide, folders = layouts
    (folders / "synsets.txt").write_text("".join(f"{w} name\n" for w in WNIDS))
    assert _listing(folders) == _listing(guide)  # the standard list: the same labels
    (folders / "synsets.txt").write_text("".join(f"{w}\n" for w in reversed(WNIDS)))
    assert [label for _, label in _listing(folders)] == [999 - label for _, label in
                                                         _listing(guide)]


def test_images_named_alike_in_two_folders_or_outside_any_folder_are_refused(
        layouts: tuple[Path, Path]) -> None:
    _, folders = layouts
    first, second = sorted((folders / "val").iterdir())[:2]
    image = next(first.iterdir())
    shutil.copy2(image, second / image.name)
    with pytest.raises(DatasetError) as error:
        dataset.list_samples(_cfg(folders))
    assert f"{image.name} is in both {first.name}/ and {second.name}/" in _one_line(error)
    (second / image.name).unlink()
    shutil.copy2(image, folders / "val" / "loose.JPEG")
    with pytest.raises(DatasetError) as error:
        dataset.list_samples(_cfg(folders, layout="folders"))
    assert "1 images lie directly in val/, outside any class folder (e.g. loose.JPEG)" in \
        _one_line(error)


def test_an_explicit_layout_reads_the_root_as_that_layout(layouts: tuple[Path, Path]) -> None:
    guide, folders = layouts
    with pytest.raises(DatasetError, match=r"label file .*folders/val_label.txt does not exist"):
        dataset.list_samples(_cfg(folders, layout="guide"))
    with pytest.raises(DatasetError, match=r"20 images lie directly in val/"):
        dataset.list_samples(_cfg(guide, layout="folders"))


# --- neither layout -----------------------------------------------------------------------------


def test_a_root_with_neither_layout_is_one_line_naming_what_it_holds(tmp_path: Path) -> None:
    root = tmp_path / "odd"
    (root / "images").mkdir(parents=True)
    (root / "labels.csv").write_text("a.jpg,1\n")
    accepts = (r"dataset.layout=auto accepts guide \(val/\*.JPEG and val_label.txt\) or folders "
               r"\(val/<wnid>/\*.JPEG\)")
    with pytest.raises(DatasetError) as error:
        dataset.list_samples(_cfg(root))
    assert re.fullmatch(rf"image folder {root}/val does not exist: check dataset.root={root}, "
                        rf"which holds images/, labels.csv; {accepts}", _one_line(error))
    (root / "val").mkdir()
    (root / "val" / "notes.txt").write_text("")
    with pytest.raises(DatasetError) as error:
        dataset.list_samples(_cfg(root))
    assert re.fullmatch(rf"dataset.root={root} holds neither layout: val/ holds no image and no "
                        r"class folder, and val_label.txt is missing \(the root holds images/, "
                        rf"labels.csv, val/\); {accepts}", _one_line(error))


def test_a_bad_dataset_layout_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as error:
        run_config("dataset.layout=imagefolder")
    assert _one_line(error) == ("dataset.layout='imagefolder' is not one of auto, guide, "
                                "folders, torchvision")
    with pytest.raises(ConfigError, match=r"dataset.layout=folders is not for dataset=synthetic"):
        run_config("dataset=synthetic", "dataset.layout=folders")
    assert run_config("dataset=synthetic", "dataset.layout=guide").dataset.layout == "guide"


def test_the_synthetic_dataset_still_lists_and_keys(tmp_path: Path) -> None:
    cfg = run_config("dataset=synthetic", "dataset.synthetic.num_images=3",
                     f"paths.cache_dir={tmp_path}")
    spec = DatasetSpec.from_config(cfg)
    assert spec.fingerprint is None and spec.layout == "guide"
    assert [s.name for s in spec.samples()] == [f"synthetic_0000000{i}.JPEG" for i in (1, 2, 3)]


# --- torchvision.datasets.ImageNet's root -------------------------------------------------------


def _torchvision_extracted(guide: Path, target: Path) -> Path:
    """A root as torchvision.datasets.ImageNet(root, split="val") leaves it: val/<wnid>/ and
    meta.bin, the (wnid_to_classes, val_wnids) tuple parse_devkit_archive saves with torch."""
    as_folders(guide, target)
    labels = guide_labels(guide)
    torch.save(({w: (w,) for w in WNIDS}, [WNIDS[labels[n]] for n in sorted(labels)]),
               target / dataset.TORCHVISION_META)
    return target


def test_torchvision_extracted_root_is_read_as_folders(layouts: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    from torchvision.datasets import ImageNet

    guide, _ = layouts
    root = _torchvision_extracted(guide, tmp_path / "torchvision")
    assert _listing(root, layout="torchvision") == _listing(root) == _listing(guide)
    assert preprocess_key(root, tmp_path / "c", "dataset.layout=torchvision") == \
        preprocess_key(guide, tmp_path / "c")
    # torchvision reads the same root (so it is the state it leaves), with ImageFolder's
    # indices: the folders present, renumbered 0..k-1; the runner keeps the standard classes
    imagenet = ImageNet(str(root), split="val")
    theirs = sorted((Path(path).name, wnid_index) for path, wnid_index in imagenet.imgs)
    assert [name for name, _ in theirs] == [name for name, _ in _listing(guide)]
    assert {label for _, label in theirs} == set(range(len(imagenet.wnids)))
    assert imagenet.wnids != WNIDS  # 20 images: a subset of the classes


def test_torchvision_archives_not_extracted_are_refused_with_the_command(tmp_path: Path) -> None:
    from torchvision.datasets import ImageNet

    root = tmp_path / "archives"
    root.mkdir()
    for name in dataset.TORCHVISION_ARCHIVES:  # tiny real archives
        with tarfile.open(root / name, "w:gz" if name.endswith(".gz") else "w"):
            pass
    with pytest.raises(DatasetError) as error:
        dataset.list_samples(_cfg(root, layout="torchvision"))
    message = _one_line(error)
    assert "holds ILSVRC2012_devkit_t12.tar.gz and ILSVRC2012_img_val.tar, not yet extracted" \
        in message
    command = f"from torchvision.datasets import ImageNet; ImageNet('{root}', split='val')"
    assert command in message
    # torchvision checks the archives' md5 (the real ImageNet's) before it extracts: tiny ones
    # cannot be extracted by it, so the test stops at its refusal
    with pytest.raises(RuntimeError, match="is not present in the root directory or is corrupted"):
        ImageNet(str(root), split="val")
    with pytest.raises(DatasetError) as error:  # auto points to layout=torchvision
        dataset.list_samples(_cfg(root))
    assert _one_line(error).endswith("pass dataset.layout=torchvision")


# --- whole runs -------------------------------------------------------------------------------


def _run_both(space: Workspace, guide: Path, folders: Path, *common: str) -> tuple[dict, dict]:
    """A CPU run on each layout, sharing the cache; their runs' metrics."""
    outputs = []
    for root in (guide, folders):
        result = space.run("dataset=imagenet", f"dataset.root={root}", *common)
        outputs.append(result.stdout + result.stderr)
    for output, name in zip(outputs, ("guide", "folders"), strict=True):
        assert f"is the {name} layout" in output
    first, second = space.runs()
    # the same key: the folders run finds the guide run's preprocessed tensors and logits
    assert space.cache_states(second)["preprocess"] == "hit"
    assert space.cache_states(second)["infer"] == "hit"
    return first.data.metrics, second.data.metrics


@pytest.mark.slow
def test_a_run_on_either_layout_gives_the_same_top_k(
        workspace: Workspace, layouts: tuple[Path, Path]) -> None:
    guide, folders = layouts
    common = ("model=alexnet", "bs=4", "model.weights=random", "stage=accuracy")
    first, second = _run_both(workspace, guide, folders, *common)
    assert {k: first[k] for k in TOPK} == {k: second[k] for k in TOPK}
    assert first["num_images"] == second["num_images"] == 20


SAMPLE_DIR = os.environ.get("RUNNER_SAMPLE_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not SAMPLE_DIR, reason="RUNNER_SAMPLE_DIR is not set (a folder with the "
                                           "real 100-image sample in the guide layout)")
def test_the_real_sample_as_folders_gives_the_guide_top_k(workspace: Workspace,
                                                          tmp_path: Path) -> None:
    sample = Path(str(SAMPLE_DIR))
    folders = as_folders(sample, tmp_path / "sample-folders")
    assert _listing(folders) == _listing(sample)
    assert len(_listing(folders)) == 100
    # with the sample's own synsets.txt (the standard order) as the class list: the same labels
    own = as_folders(sample, tmp_path / "sample-synsets", keep=("synsets.txt",))
    assert _listing(own) == _listing(sample)
    common = ("model=alexnet", "bs=16", "model.weights=random", "stage=accuracy")
    first, second = _run_both(workspace, sample, folders, *common)
    assert {k: first[k] for k in TOPK} == {k: second[k] for k in TOPK}
