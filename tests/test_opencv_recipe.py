"""`model.preprocess.library=opencv`: MLPerf's ResNet50 preprocessing, bit for bit.

The reference is `tests/reference.py`'s `mlperf_resnet50`, written from MLPerf Inference's
`pre_process_vgg` (cv2.imread, BGR->RGB, resize to 87.5% crop fraction with INTER_AREA, truncated
center crop, float32 mean subtraction). The runner's crop (`load_cropped`) and its fed tensor
(`normalize`) must equal it exactly, on the 100 real sample images and on generated images of
every kind cv2.imread meets: grayscale, CMYK, PNG content named .JPEG, alpha, 16-bit, a
truncated JPEG, odd sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.artifacts import PreprocessedDataset
from runner.config import OPENCV_INTERPOLATIONS, PreprocessRecipe
from runner.data.transforms import load_cropped, normalize
from runner.errors import ConfigError, DatasetError
from tests.conftest import SAMPLE_ROOT, Workspace, needs_sample, run_config
from tests.reference import (
    entry,
    mlperf_resnet50,
    mlperf_resnet50_crop,
    onnx_cpu_logits,
    run_logits,
)

MLPERF = run_config("model=resnet50_mlperf").model.preprocess


def fed_tensor(path: Path, recipe: PreprocessRecipe) -> np.ndarray:
    return normalize(load_cropped(path, recipe)[None], recipe)[0]


def assert_mlperf_exact(path: Path) -> None:
    crop = load_cropped(path, MLPERF)
    assert crop.dtype == np.uint8 and crop.shape == (224, 224, 3) and crop.flags.c_contiguous
    np.testing.assert_array_equal(crop, mlperf_resnet50_crop(path), err_msg=str(path))
    tensor = fed_tensor(path, MLPERF)
    expected = mlperf_resnet50(path)
    assert tensor.dtype == expected.dtype == np.float32
    # bit for bit: the same float32 bits, not merely close values
    np.testing.assert_array_equal(tensor.view(np.uint32), expected.view(np.uint32),
                                  err_msg=str(path))


def test_resnet50_mlperf_is_mlperfs_recipe() -> None:
    model = run_config("model=resnet50_mlperf").model
    assert model.arch == "torchvision.models.resnet50" and model.num_classes == 1000
    assert (MLPERF.library, MLPERF.interpolation, MLPERF.crop, MLPERF.crop_offset) == (
        "opencv", "INTER_AREA", 224, "floor")
    assert MLPERF.resize is None and MLPERF.crop_fraction == 0.875 and MLPERF.shorter_side == 256
    assert not MLPERF.divide_by_255 and MLPERF.channel_order == "RGB"
    assert (MLPERF.mean, MLPERF.std) == ([123.68, 116.78, 103.94], [1.0, 1.0, 1.0])


@needs_sample
def test_mlperf_recipe_is_bit_exact_on_the_real_sample_images() -> None:
    paths = sorted((SAMPLE_ROOT / "val").glob("*.JPEG"))
    assert len(paths) == 100
    assert any(Image.open(p).mode == "L" for p in paths)  # the grayscale one is among them
    for path in paths:
        assert_mlperf_exact(path)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images of every kind cv2.imread meets, named .JPEG as in ImageNet's val folder."""
    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(11)

    def pixels(height: int, width: int, channels: int) -> np.ndarray:
        # a gradient plus noise: resize filters and rounding rules give visibly different values
        ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
        noise = rng.integers(0, 56, (height, width, channels))
        return (ramp + noise).astype(np.uint8)

    made: dict[str, Path] = {}

    def save(name: str, image: Image.Image, fmt: str = "JPEG") -> None:
        made[name] = root / f"{name}.JPEG"
        image.save(made[name], fmt)

    save("landscape", Image.fromarray(pixels(375, 500, 3)))
    save("portrait", Image.fromarray(pixels(500, 333, 3)))
    save("square", Image.fromarray(pixels(300, 300, 3)))
    save("shorter_side_256", Image.fromarray(pixels(256, 341, 3)))  # cv2.resize to its own size
    save("upscaled", Image.fromarray(pixels(120, 161, 3)))
    save("odd_offsets", Image.fromarray(pixels(333, 257, 3)))
    save("grayscale", Image.fromarray(pixels(280, 350, 1)[..., 0], "L"))
    save("cmyk", Image.fromarray(pixels(300, 400, 4), "CMYK"))  # PIL writes Adobe CMYK JPEGs
    save("png_rgba", Image.fromarray(pixels(260, 390, 4), "RGBA"), "PNG")
    save("png_palette", Image.fromarray(pixels(270, 300, 3)).convert("P"), "PNG")
    wide = (pixels(264, 300, 1)[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    save("png_16bit_gray", Image.fromarray(wide), "PNG")  # mode I;16
    # cut in half: cv2.imread decodes what is there and fills the rest (MLPerf keeps the image)
    whole = made["landscape"].read_bytes()
    made["truncated"] = root / "truncated.JPEG"
    made["truncated"].write_bytes(whole[: len(whole) // 2])
    return made


def test_mlperf_recipe_is_bit_exact_on_every_image_kind(odd_images: dict[str, Path]) -> None:
    with Image.open(odd_images["cmyk"]) as image:
        assert image.mode == "CMYK"
    with Image.open(odd_images["png_rgba"]) as image:
        assert image.format == "PNG"
    for path in odd_images.values():
        assert_mlperf_exact(path)


def test_grayscale_gives_three_equal_channels(odd_images: dict[str, Path]) -> None:
    crop = load_cropped(odd_images["grayscale"], MLPERF)
    assert (crop[..., 0] == crop[..., 1]).all() and (crop[..., 1] == crop[..., 2]).all()


def test_opencv_and_pil_resize_differently(odd_images: dict[str, Path]) -> None:
    """Why a recipe must name its library: the same geometry, other pixels."""
    pil = PreprocessRecipe(library="pil", interpolation="bilinear", crop_offset="floor")
    opencv = PreprocessRecipe(library="opencv", interpolation="INTER_LINEAR",
                              crop_offset="floor")
    path = odd_images["landscape"]  # a 1.46x downscale: PIL antialiases, INTER_LINEAR does not
    diff = np.abs(load_cropped(path, pil).astype(int) - load_cropped(path, opencv).astype(int))
    assert diff.max() > 10


@pytest.mark.parametrize("interpolation", OPENCV_INTERPOLATIONS)
def test_every_opencv_interpolation_gives_the_crop(odd_images: dict[str, Path],
                                                   interpolation: str) -> None:
    recipe = PreprocessRecipe(library="opencv", interpolation=interpolation, resize=232)
    crop = load_cropped(odd_images["portrait"], recipe)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8


def test_normalize_channel_order_and_scale_follow_their_formula() -> None:
    pixels = np.random.default_rng(5).integers(0, 256, (2, 4, 6, 3), dtype=np.uint8)
    recipe = PreprocessRecipe(divide_by_255=False, mean=[104.0, 117.0, 123.0],
                              std=[58.4, 57.1, 57.4], channel_order="BGR")
    bgr = pixels[..., ::-1].astype(np.float32)  # a Caffe-style script: cv2's BGR, 0..255
    expected = ((bgr - np.float32([104.0, 117.0, 123.0])) / np.float32([58.4, 57.1, 57.4]))
    np.testing.assert_array_equal(normalize(pixels, recipe), expected.transpose(0, 3, 1, 2))


@pytest.mark.parametrize(("overrides", "key"), [
    (["model.preprocess.library=cv2"], "model.preprocess.library"),
    (["model.preprocess.library=opencv"], "model.preprocess.interpolation"),
    (["model.preprocess.interpolation=INTER_AREA"], "model.preprocess.interpolation"),
    (["model.preprocess.crop_fraction=0.875"], "crop_fraction"),
    (["model.preprocess.resize=null"], "model.preprocess.resize"),
    (["model.preprocess.resize=null", "model.preprocess.crop_fraction=1.2"],
     "model.preprocess.crop_fraction"),
    (["model.preprocess.channel_order=rgb"], "model.preprocess.channel_order"),
    (["model=resnet50_mlperf", "model.preprocess.interpolation=bilinear"],
     "model.preprocess.interpolation"),
])
def test_bad_recipe_is_a_one_line_error_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        run_config(*overrides)
    message = str(error.value)
    assert key in message and "\n" not in message


def test_undecodable_image_is_a_dataset_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.JPEG"
    path.write_bytes(b"not an image at all" * 10)
    with pytest.raises(DatasetError, match=r"broken\.JPEG.*cannot be decoded by OpenCV"):
        load_cropped(path, MLPERF)


# a small model with an OpenCV, Caffe-style recipe: every normalize knob away from its default
OPENCV_RESNET18 = ("model=resnet18", "model.preprocess.library=opencv",
                   "model.preprocess.interpolation=INTER_AREA", "model.preprocess.resize=null",
                   "model.preprocess.crop_fraction=0.875", "model.preprocess.crop_offset=floor",
                   "model.preprocess.divide_by_255=false", "model.preprocess.channel_order=BGR",
                   "model.preprocess.mean=[103.94,116.78,123.68]",
                   "model.preprocess.std=[57.4,57.1,58.4]")
COMMON = ("dataset=synthetic", "dataset.synthetic.num_images=8", "dataset.synthetic.seed=21",
          "model.weights=random", "stage=accuracy", "bs=4")


@pytest.mark.slow
def test_opencv_run_caches_and_infers_like_the_pil_one(workspace: Workspace) -> None:
    workspace.run(*OPENCV_RESNET18, *COMMON)
    workspace.run(*OPENCV_RESNET18, *COMMON)
    workspace.run("model=resnet18", *COMMON)
    first, again, pil = workspace.runs()
    for run in (first, again, pil):
        assert run.info.status == "FINISHED"
    recipe = run_config(*OPENCV_RESNET18, *COMMON).model.preprocess

    # the cache holds exactly the OpenCV recipe's crops of the dataset's images
    data = PreprocessedDataset(entry(workspace, "preprocess", first))
    images = Path(run_config(*COMMON, f"paths.cache_dir={workspace.cache}").dataset.root) / "val"
    assert len(data) == 8
    for index, name in enumerate(data.names):
        np.testing.assert_array_equal(data.pixels(index, index + 1)[0],
                                      load_cropped(images / name, recipe))
    # the logits are the ONNX model's on those crops, normalized with the recipe (BGR, 0..255)
    np.testing.assert_allclose(run_logits(workspace, first),
                               onnx_cpu_logits(workspace, first, recipe), atol=1e-4)
    assert first.data.metrics["parity_top1_agreement"] == 1.0

    # a rerun finds every stage in the cache; the PIL recipe is another preprocess entry
    stages = ("export", "convert", "preprocess", "infer", "parity", "evaluate")
    assert all(workspace.cache_states(again)[stage] == "hit" for stage in stages)
    pil_cache = workspace.cache_states(pil)
    assert pil_cache["export"] == "hit" and pil_cache["preprocess"] == "miss"
    assert entry(workspace, "preprocess", pil) != entry(workspace, "preprocess", first)
    pil_data = PreprocessedDataset(entry(workspace, "preprocess", pil))
    assert pil_data.names == data.names
    assert not np.array_equal(pil_data.pixels(0, 8), data.pixels(0, 8))
