"""Bad inputs, one test per row of the issue's matrix, checked where the error is raised: each
is a RunnerError whose one-line message names the culprit and the fix. The CLI side (exit status,
one line on stderr, FAILED MLflow run) is in test_errors_cli.py."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runner import redact
from runner.cache import atomic_save_npy, check_writable
from runner.config import DatasetConfig, ModelConfig, PreprocessRecipe, allowed_arch_prefixes
from runner.data import dataset
from runner.data.transforms import load_cropped, normalize
from runner.errors import (
    ConfigError,
    DatasetError,
    ModelFileError,
    RunnerError,
    StorageError,
    WeightsError,
)
from runner.models import build, onnx_file, weights
from tests.conftest import run_config
from tests.test_transforms import torchvision_reference

RECIPE = PreprocessRecipe()
ALEXNET = ModelConfig(name="alexnet", arch="torchvision.models.alexnet")


def _one_line(error: pytest.ExceptionInfo[RunnerError]) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


# --- dataset folder and label file ----------------------------------------------------------


def _dataset(root: Path, labels: str | bytes | None, images: tuple[str, ...] = ("a.JPEG",
             "b.JPEG", "c.JPEG")) -> DatasetConfig:
    """A dataset folder with tiny real JPEGs named `images` and the label file `labels`."""
    (root / "val").mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "val" / name, "JPEG")
    if labels is not None:
        data = labels.encode() if isinstance(labels, str) else labels
        (root / "val_label.txt").write_bytes(data)
    return DatasetConfig(name="test", root=str(root))


GOOD = "a.JPEG 1\nb.JPEG 2\nc.JPEG 3\n"

LABEL_ROWS = [
    # id, label file content, expected message (regex)
    ("malformed line", "a.JPEG 1\nb.JPEG\nc.JPEG 3\n",
     r"val_label.txt:2: expected '<file name> <class id>'.*got 'b.JPEG'"),
    ("class not an integer", "a.JPEG 1\nb.JPEG two\nc.JPEG 3\n", r"val_label.txt:2: expected"),
    ("unicode digit", "a.JPEG 1\nb.JPEG \u0663\nc.JPEG 3\n", r"val_label.txt:2: expected"),
    ("duplicate name", "a.JPEG 1\nb.JPEG 2\nc.JPEG 3\nb.JPEG 2\n",
     r"val_label.txt:4: b.JPEG is listed again \(first on line 2\): keep one label per image"),
    ("out of range", "a.JPEG 1\nb.JPEG 1000\nc.JPEG 3\n",
     r"1 labels outside 0..999.*line 2 'b.JPEG 1000'.*model.num_classes / model.class_offset"),
    ("negative", "a.JPEG -1\nb.JPEG 2\nc.JPEG 3\n", r"1 labels outside 0..999.*'a.JPEG -1'"),
    ("parent dir escape", "a.JPEG 1\n../b.JPEG 2\nc.JPEG 3\n",
     r"val_label.txt:2: '../b.JPEG' is not a plain file name"),
    ("absolute path", "a.JPEG 1\n/etc/passwd 2\n",
     r"val_label.txt:2: '/etc/passwd' is not a plain"),
    ("sub folder", "sub/a.JPEG 1\n", r"val_label.txt:1: 'sub/a.JPEG' is not a plain file name"),
    ("dot dot alone", ".. 1\n", r"val_label.txt:1: '..' is not a plain file name"),
    ("empty", "\n\n", r"val_label.txt has no labels"),
    ("not utf-8", b"a.JPEG 1\n\xff\xfe 2\n", r"val_label.txt is not UTF-8 text \(byte 9\)"),
]


@pytest.mark.parametrize(("content", "expected"), [r[1:] for r in LABEL_ROWS],
                         ids=[r[0] for r in LABEL_ROWS])
def test_bad_label_file_is_refused_naming_the_line(tmp_path: Path, content: str | bytes,
                                                   expected: str) -> None:
    cfg = _dataset(tmp_path, content)
    with pytest.raises(DatasetError, match=expected) as error:
        dataset.list_samples(cfg, ALEXNET)
    _one_line(error)


def test_labels_are_checked_against_the_model_classes_and_offset(tmp_path: Path) -> None:
    cfg = _dataset(tmp_path, "a.JPEG 0\nb.JPEG 999\nc.JPEG 50\n")
    assert [s.label for s in dataset.list_samples(cfg, ALEXNET)] == [0, 999, 50]
    # a 1001-class model with the background class first: labels 0..999 still fit
    background = ModelConfig(name="inceptionv4", arch="torchvision.models.alexnet",
                             num_classes=1001, class_offset=1)
    assert len(dataset.list_samples(cfg, background)) == 3
    ten_classes = ModelConfig(name="tiny", arch="torchvision.models.alexnet", num_classes=10)
    with pytest.raises(DatasetError, match=r"2 labels outside 0..9, .*line 2 'b.JPEG 999', "
                                           r"line 3 'c.JPEG 50'"):
        dataset.list_samples(cfg, ten_classes)


def test_missing_label_file_and_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"label file .*val_label.txt does not exist: check "
                                           r"dataset.root and dataset.labels"):
        dataset.list_samples(_dataset(tmp_path / "a", None))
    cfg = _dataset(tmp_path / "b", GOOD)
    (tmp_path / "b" / "val_label.txt").unlink()
    (tmp_path / "b" / "val_label.txt").mkdir()
    with pytest.raises(DatasetError, match=r"val_label.txt is not a file"):
        dataset.list_samples(cfg)
    with pytest.raises(DatasetError, match=r"image folder .*nowhere/val does not exist: check "
                                           r"dataset.root="):
        dataset.list_samples(DatasetConfig(name="x", root=str(tmp_path / "nowhere")))
    with pytest.raises(DatasetError, match=r"dataset.root is not set for dataset=x: pass "
                                           r"dataset.root="):
        dataset.list_samples(DatasetConfig(name="x", root=None))


def test_empty_image_folder(tmp_path: Path) -> None:
    cfg = _dataset(tmp_path, GOOD, images=())
    (tmp_path / "val" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"val holds no images \(.jpeg, .jpg, .png, .bmp\)"):
        dataset.list_samples(cfg)


def test_mismatch_reports_counts_and_first_examples_then_stops(tmp_path: Path) -> None:
    images = tuple(f"img{i}.JPEG" for i in range(1, 7))
    labels = "".join(f"img{i}.JPEG {i}\n" for i in (1, 2, 7, 8, 9, 10, 11))
    cfg = _dataset(tmp_path, labels, images=images)
    with pytest.raises(DatasetError) as error:
        dataset.list_samples(cfg)
    assert _one_line(error).endswith(
        "4 images without a label (e.g. img3.JPEG, img4.JPEG, img5.JPEG, ...) and 5 labels "
        "without an image (e.g. img7.JPEG, img8.JPEG, img9.JPEG, ...); fix val_label.txt or "
        "pass dataset.on_mismatch=skip to use only the labelled images")


def test_mismatch_skip_uses_the_labelled_images_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _dataset(tmp_path, "a.JPEG 1\nc.JPEG 3\nz.JPEG 4\n")
    cfg.on_mismatch = "skip"
    with caplog.at_level(logging.WARNING, logger="runner"):
        samples = dataset.list_samples(cfg)
    assert [(s.name, s.label) for s in samples] == [("a.JPEG", 1), ("c.JPEG", 3)]
    assert "1 images without a label (e.g. b.JPEG) and 1 labels without an image (e.g. z.JPEG)" \
        in caplog.text


# --- images ---------------------------------------------------------------------------------


def _photo(size: tuple[int, int] = (300, 240)) -> Image.Image:
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([(x * 255 // size[0]), (y * 255 // size[1]), (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


@pytest.mark.parametrize("damage", ["truncated", "not an image", "empty file", "png header only"])
def test_undecodable_image_is_refused_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "ILSVRC2012_val_00000001.JPEG"
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG", quality=95)
    data = {
        "truncated": buffer.getvalue()[: len(buffer.getvalue()) // 2],
        "not an image": b"<html>404 Not Found</html>",
        "empty file": b"",
        "png header only": b"\x89PNG\r\n\x1a\n",
    }[damage]
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=r"image .*ILSVRC2012_val_00000001.JPEG cannot be "
                                           r"decoded .*: replace it, or remove it") as error:
        load_cropped(path, RECIPE)
    _one_line(error)


def test_cmyk_jpeg_is_converted_like_the_torchvision_reference(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.JPEG"
    _photo().convert("CMYK").save(path, "JPEG", quality=95)
    with Image.open(path) as image:
        assert image.mode == "CMYK"
    crop = load_cropped(path, RECIPE)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(normalize(crop[None], RECIPE)[0], torchvision_reference(path))


def test_grayscale_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    gray, rgba = tmp_path / "gray.JPEG", tmp_path / "rgba.png"
    _photo().convert("L").save(gray, "JPEG")
    _photo().convert("RGBA").save(rgba)
    crop = load_cropped(gray, RECIPE)
    assert (crop[..., 0] == crop[..., 1]).all() and (crop[..., 1] == crop[..., 2]).all()
    assert load_cropped(rgba, RECIPE).shape == (224, 224, 3)


def test_16_bit_png_keeps_its_high_byte_instead_of_saturating(tmp_path: Path) -> None:
    values = (np.arange(300 * 240, dtype=np.uint32).reshape(240, 300) * 3 % 65536).astype(
        np.uint16)
    sixteen, eight = tmp_path / "sixteen.png", tmp_path / "eight.png"
    Image.fromarray(values).save(sixteen)
    Image.fromarray((values >> 8).astype(np.uint8), "L").save(eight)
    with Image.open(sixteen) as image:
        assert image.mode.startswith("I;16")
        saturated = np.asarray(image.convert("RGB"))
    assert (saturated == 255).mean() > 0.9  # what a plain convert("RGB") would feed the model
    crop = load_cropped(sixteen, RECIPE)
    np.testing.assert_array_equal(crop, load_cropped(eight, RECIPE))
    assert 0 < crop.mean() < 255


def test_32_bit_float_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "depth.tif"
    Image.fromarray(np.zeros((40, 40), dtype=np.float32), "F").save(path)
    with pytest.raises(DatasetError, match=r"depth.tif has 32-bit pixels \(mode F\): convert"):
        load_cropped(path, RECIPE)


# --- checkpoints ----------------------------------------------------------------------------

SQUEEZENET = ModelConfig(name="squeezenet", arch="torchvision.models.squeezenet1_1")


@pytest.fixture(scope="module")
def squeezenet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "squeezenet.pth"
    net = build.build(SQUEEZENET.arch, SQUEEZENET.arch_kwargs, None, seed=1)
    torch.save(net.state_dict(), path)
    return path


def test_good_checkpoint_loads(squeezenet_checkpoint: Path) -> None:
    net = build.build(SQUEEZENET.arch, SQUEEZENET.arch_kwargs, squeezenet_checkpoint, seed=99)
    expected = torch.load(squeezenet_checkpoint, weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())


def test_missing_checkpoint(tmp_path: Path) -> None:
    src = weights.source(ModelConfig(name="x", arch="torchvision.models.alexnet",
                                     weights=str(tmp_path / "gone.pth")))
    with pytest.raises(WeightsError, match=r"checkpoint .*gone.pth does not exist: fix "
                                           r"model.weights"):
        weights.fetch(src, tmp_path)


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_truncated_checkpoint(tmp_path: Path, squeezenet_checkpoint: Path,
                              keep: float) -> None:
    data = squeezenet_checkpoint.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(WeightsError, match=r"checkpoint .*cut.pth cannot be read \(.+\): it may "
                                           r"be truncated") as error:
        build.build(SQUEEZENET.arch, SQUEEZENET.arch_kwargs, path, seed=0)
    _one_line(error)


def test_md5_mismatch_of_a_local_checkpoint(tmp_path: Path,
                                            squeezenet_checkpoint: Path) -> None:
    actual = hashlib.md5(squeezenet_checkpoint.read_bytes()).hexdigest()
    cfg = ModelConfig(name="x", arch="torchvision.models.squeezenet1_1",
                      weights=str(squeezenet_checkpoint), weights_checksum="md5:" + "ab" * 16)
    # the user's own file, not a damaged download: how to use it, not "fetch it again"
    with pytest.raises(WeightsError, match=rf"has md5 {actual}, not the abab.* of "
                       rf"model.weights_checksum \(the guide's checkpoint\): if it is your own "
                       rf"checkpoint, pass model.weights_checksum=md5:{actual} \(or "
                       r"model.weights_checksum=null\)$"):
        weights.fetch(weights.source(cfg), tmp_path)


def test_a_folder_or_a_text_file_as_checkpoint_is_named(tmp_path: Path) -> None:
    folder = ModelConfig(name="x", arch="torchvision.models.squeezenet1_1",
                         weights=str(tmp_path), weights_checksum=None)
    with pytest.raises(WeightsError, match=r"checkpoint .* is a directory, not a checkpoint file"):
        weights.fetch(weights.source(folder), tmp_path)
    for text in ("hello world\n", "x\n" * 50, ""):
        path = tmp_path / "notes.pth"
        path.write_text(text)
        with pytest.raises(WeightsError, match=r"checkpoint .*notes.pth cannot be read \(\w+: "
                                               r".*\): it may be truncated or not a PyTorch "
                                               r"checkpoint") as error:
            build.build(SQUEEZENET.arch, SQUEEZENET.arch_kwargs, path, seed=0)
        _one_line(error)


def test_a_whole_pickled_model_is_refused_in_one_plain_line(tmp_path: Path) -> None:
    path = tmp_path / "whole.pth"
    torch.save(build.build(SQUEEZENET.arch, SQUEEZENET.arch_kwargs, None, seed=0), path)
    with pytest.raises(WeightsError) as error:
        build.build(SQUEEZENET.arch, SQUEEZENET.arch_kwargs, path, seed=0)
    message = _one_line(error)
    assert "\x1b" not in message
    assert re.search(r"refused by the safe loader \(weights_only=True\): Unsupported global: "
                     r"GLOBAL torchvision.models.squeezenet.SqueezeNet; .*save the model's "
                     r"state_dict\(\)", message), message


def test_checkpoint_of_another_shape_lists_the_tensors(tmp_path: Path) -> None:
    ten = ModelConfig(name="x", arch="torchvision.models.squeezenet1_1",
                      arch_kwargs={"num_classes": 10})
    net = build.build(ten.arch, ten.arch_kwargs, None, seed=0)
    torch.save(net.state_dict(), tmp_path / "ten.pth")
    with pytest.raises(WeightsError, match=r"squeezenet1_1: 2 tensors of another shape "
                                           r"\(checkpoint vs model: classifier.1.weight "
                                           r"\(10, 512, 1, 1\) vs \(1000, 512, 1, 1\), "
                                           r"classifier.1.bias \(10,\) vs \(1000,\)\); check "
                                           r"model.arch_kwargs \(e.g. num_classes\)"):
        build.build(SQUEEZENET.arch, SQUEEZENET.arch_kwargs, tmp_path / "ten.pth", seed=0)


def test_checkpoint_with_wrong_keys_shows_missing_and_unexpected(
    tmp_path: Path, squeezenet_checkpoint: Path
) -> None:
    state = torch.load(squeezenet_checkpoint, weights_only=True)
    state["extra.bias"] = state.pop("features.0.bias")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"1 missing keys \(features.0.bias\), 1 unexpected "
                                           r"keys \(extra.bias\)"):
        build.build(SQUEEZENET.arch, SQUEEZENET.arch_kwargs, tmp_path / "w.pth", seed=0)


class _RunsCode:
    """Unpickling this object runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_runs_code_is_refused(tmp_path: Path, writer: str) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    payload = {"features.0.weight": torch.zeros(1), "x": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(WeightsError, match=r"evil.pth was refused by the safe loader "
                                           r"\(weights_only=True\).*never code") as error:
        build.build(SQUEEZENET.arch, SQUEEZENET.arch_kwargs, path, seed=0)
    _one_line(error)
    assert not marker.exists()
    if writer == "torch.save":  # the payload is live: the unsafe loader would have run it
        torch.load(path, weights_only=False)
        assert marker.exists()


# --- what model.arch may import -------------------------------------------------------------


@pytest.mark.parametrize(("arch", "expected"), [
    ("os.system", r"model.arch='os.system' is outside the allowed packages"),
    ("builtins.eval", r"outside the allowed packages"),
    ("torchvision.models_evil.x", r"outside the allowed packages"),
    ("torchvision.models._api.load_state_dict_from_url", r"outside the allowed packages"),
    ("torchvision.models.alexnet.__builtins__", r"outside the allowed packages"),
    ("torchvision.models.resnet.ImageClassification",
     r"is type from torchvision.transforms._presets, not a model builder"),
    ("torchvision.models.resnet.partial", r"is type from functools, not a model builder"),
    ("torchvision.models.nosuchnet", r"cannot be imported: check the name"),
])
def test_arch_outside_the_allow_list_is_refused(arch: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        build.resolve_arch(arch)


def test_the_allow_list_is_checked_with_the_config_and_widened_only_explicitly() -> None:
    with pytest.raises(ConfigError, match=r"model.arch='torch.nn.Identity' is outside .*pass "
                                          r"security.extra_arch_prefixes=\[its.prefix\]"):
        run_config("model.arch=torch.nn.Identity")
    cfg = run_config("model.arch=torch.nn.Identity", "security.extra_arch_prefixes=[torch.nn]")
    net = build.build(cfg.model.arch, cfg.model.arch_kwargs, None, 0,
                      allowed_arch_prefixes(cfg.security.extra_arch_prefixes))
    assert isinstance(net, torch.nn.Identity)
    with pytest.raises(ConfigError, match=r"security.extra_arch_prefixes: 'torch nn' is not"):
        run_config("security.extra_arch_prefixes=['torch nn']")


def test_arch_kwargs_and_non_module_results_are_config_errors() -> None:
    cfg = ModelConfig(name="x", arch="torchvision.models.alexnet",
                      arch_kwargs={"num_classes": "ten"})
    with pytest.raises(ConfigError, match=r"refused model.arch_kwargs=\{'num_classes': 'ten'\}"):
        build.build(cfg.arch, cfg.arch_kwargs, None, seed=0)
    cfg = ModelConfig(name="x", arch="torchvision.models.get_model_weights",
                      arch_kwargs={"name": "alexnet"})
    with pytest.raises(ConfigError, match=r"returned a .*, not a torch.nn.Module"):
        build.build(cfg.arch, cfg.arch_kwargs, None, seed=0)


# --- ONNX files -----------------------------------------------------------------------------


def test_corrupt_onnx_is_refused_and_a_good_one_passes(tmp_path: Path) -> None:
    good = tmp_path / "good.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),), str(good), opset_version=11,
                      dynamo=False)
    onnx_file.check(good)
    for name, data in (("truncated", good.read_bytes()[:100]), ("garbage", b"\x00junk" * 50)):
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(data)
        with pytest.raises(ModelFileError, match=rf"ONNX file .*{name}.onnx is corrupt or not an "
                                                 r"ONNX model .*cache.force=\[export\]"):
            onnx_file.check(path)
    with pytest.raises(ModelFileError, match=r"gone.onnx does not exist"):
        onnx_file.check(tmp_path / "gone.onnx")


# --- output folders -------------------------------------------------------------------------


def test_a_write_that_fails_leaves_no_file_behind(tmp_path: Path) -> None:
    target = tmp_path / "chunk_000001.npy"
    # the kernel's own "disk full": every write to /dev/full fails with ENOSPC
    (tmp_path / f".{target.name}.tmp-{os.getpid()}").symlink_to("/dev/full")
    with pytest.raises(OSError, match="No space left on device"):
        atomic_save_npy(target, np.zeros((64, 224, 224, 3), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_cache_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StorageError, match=r"paths.cache_dir=.*a-file/cache is not writable "
                                           r"\(Not a directory\): pass paths.cache_dir="):
        check_writable(blocker / "cache", "paths.cache_dir")
    check_writable(tmp_path / "new" / "cache", "paths.cache_dir")
    assert (tmp_path / "new" / "cache").is_dir()
    assert list((tmp_path / "new" / "cache").iterdir()) == []


# --- files that are not images: refused before they are opened, with what they are ----------


def test_entries_that_are_not_regular_files_are_refused_before_opening(tmp_path: Path) -> None:
    cfg = _dataset(tmp_path, "a.JPEG 1\nb.JPEG 2\nc.JPEG 3\nd.JPEG 4\ne.JPEG 5\n",
                   images=("a.JPEG",))
    os.mkfifo(tmp_path / "val" / "b.JPEG")  # opening it would block forever
    (tmp_path / "val" / "c.JPEG").symlink_to(tmp_path / "gone.JPEG")
    (tmp_path / "val" / "d.JPEG").mkdir()
    (tmp_path / "val" / "e.JPEG").symlink_to("/dev/zero")  # endless
    with pytest.raises(DatasetError) as error:
        dataset.list_samples(cfg)
    message = _one_line(error)
    assert re.search(r"^4 image entries are not regular files: .*/val/b.JPEG \(a FIFO\), "
                     r".*/val/c.JPEG \(a broken symlink\), .*/val/d.JPEG \(a folder\) and 1 "
                     r"more; replace them", message), message


def test_a_thin_image_is_refused_before_it_is_resized(tmp_path: Path) -> None:
    """A 2.6 KB 1x8000 JPEG would be resized to 256x2048000 (1.5 GB of RGB)."""
    path = tmp_path / "thin.JPEG"
    Image.new("RGB", (1, 8000), (9, 99, 199)).save(path, "JPEG")
    assert path.stat().st_size < 10_000
    with pytest.raises(DatasetError) as error:
        load_cropped(path, RECIPE)
    assert re.fullmatch(r"image .*thin.JPEG is 1x8000 \(aspect ratio 8000:1\): resizing its "
                        r"shorter side makes it 256x2048000, more than 16 Mpx; crop it, or remove "
                        r"it and its line in the label file", _one_line(error))
    wide = tmp_path / "panorama.JPEG"  # 1:12, a real panorama: still fine
    Image.new("RGB", (3600, 300), (9, 99, 199)).save(wide, "JPEG")
    assert load_cropped(wide, RECIPE).shape == (224, 224, 3)


def test_a_label_file_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    cfg = _dataset(tmp_path, b"\xef\xbb\xbf" + GOOD.encode())
    assert [s.name for s in dataset.list_samples(cfg)] == ["a.JPEG", "b.JPEG", "c.JPEG"]


# --- secrets --------------------------------------------------------------------------------


def test_secrets_are_masked_in_text_and_config_trees() -> None:
    env = {"HF_TOKEN": "hf_abcdef123456", "MLFLOW_TRACKING_PASSWORD": "pa55word!",
           "AWS_SECRET_ACCESS_KEY": "wJalr/K7MDENG", "PATH": "/usr/bin", "SSH_AUTH_SOCK": "/t/s",
           "GITHUB_TOKEN_FILE": "/etc/token-file", "SOME_AUTH_ENABLED": "true",
           "PWD": "/work/wt-7", "OLDPWD": "/work/main", "DB_PWD": "s3cr3t-db"}
    secrets = redact.secret_values(env)
    assert secrets == ["hf_abcdef123456", "wJalr/K7MDENG", "pa55word!", "s3cr3t-db"]
    config = {
        "model": {"weights": "https://bob:hunter22@models.example/a.pth"},
        "mlflow": {"tracking_uri": "http://u:pa55word!@mlflow:5000", "api_token": "xyz"},
        "dataset": {"root": "/data/hf_abcdef123456/imagenet", "limit": None},
        "paths": ["/work/x", "s3://k:wJalr/K7MDENG"],
        "bs": 16,
    }
    masked = redact.tree(config, secrets)
    assert masked == {
        "model": {"weights": "https://bob:***@models.example/a.pth"},
        "mlflow": {"tracking_uri": "http://u:***@mlflow:5000", "api_token": "***"},
        "dataset": {"root": "/data/***/imagenet", "limit": None},
        "paths": ["/work/x", "s3://k:***"],
        "bs": 16,
    }
    assert redact.text("error at http://127.0.0.1:5000/x (user alice)", secrets) == \
        "error at http://127.0.0.1:5000/x (user alice)"


def test_a_url_password_is_masked_in_any_later_text(tmp_path: Path) -> None:
    """urllib takes `bob:<password>@host` for a host and a port, and says "nonnumeric port:
    '<password>@host'": no URL left for a pattern to recognize. Downloads send the credentials
    as a header instead, and the config's passwords are masked wherever they turn up."""
    password = "Hunter2-xyzzy"
    url = f"https://bob:{password}@127.0.0.1/alexnet-owt-4df8aa71.pth"
    redact.remember({"model": {"weights": url}, "mlflow": {"api_key": "k3y-abcdef"}})
    assert redact.text(f"InvalidURL: nonnumeric port: '{password}@127.0.0.1'") == \
        "InvalidURL: nonnumeric port: '***@127.0.0.1'"
    assert redact.text("header k3y-abcdef") == "header ***"
    with pytest.raises(WeightsError) as error:  # nothing listens on 127.0.0.1:443 here
        weights.download(url, tmp_path / "a.pth", None, timeout_s=5)
    assert password not in str(error.value)
    assert re.search(r"could not download https://bob:\*\*\*@127.0.0.1/", redact.text(
        str(error.value))), error.value


# --- the config: Hydra's composition errors and the schema's checks, as the CLI prints them ---


@pytest.mark.parametrize(("overrides", "expected"), [
    (["model=nosuchnet"], r"^model=nosuchnet is not a known model: choose one of alexnet, "
                          r"efficientnet_b0, inceptionv4, .* \(the files in conf/model/\)$"),
    (["chip=tpu9"], r"^chip=tpu9 is not a known chip: choose one of ascend310, .*, cpu, "),
    (["dataset=coco"], r"^dataset=coco is not a known dataset: choose one of imagenet, "
                       r"imagenet_sample, synthetic "),
    (["stage=train"], r"^stage=train is not a known stage: choose one of accuracy, all, "
                      r"performance, score "),
    (["stage.stages=[export,train]"], r"^stage.stages='train' is not one of export, convert"),
    (["bs=abc"], r"^Error merging override bs=abc: Value 'abc' of type 'str' could not be "
                 r"converted to Integer \(python -m runner --help lists the groups"),
    (["bs=1.5"], r"^Error merging override bs=1.5: Value '1.5' of type 'float' could not be "
                 r"converted to Integer"),
    (["bs=0"], r"^bs=0 must be a positive integer, e.g. bs=16$"),
    (["bs=-3"], r"^bs=-3 must be a positive integer, e.g. bs=16$"),
    (["model.wieghts=random"], r"^Could not override 'model.wieghts': Key 'wieghts' not in "
                               r"'ModelConfig'"),
    (["dataset.root=${oc.env:RUNNER_NO_SUCH_VARIABLE}"],
     r"^invalid config \(key dataset.root\): .*Environment variable 'RUNNER_NO_SUCH_VARIABLE' "
     r"not found"),
])
def test_config_errors_read_as_one_line(overrides: list[str], expected: str) -> None:
    from runner.cli import describe

    with pytest.raises(Exception) as error:
        run_config(*overrides)
    message = describe(error.value)
    assert "\n" not in message
    assert re.search(expected, message), message
