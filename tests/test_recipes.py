"""Every shipped preprocessing recipe gives the tensors of its reference procedure.

InceptionV4: the guide's own script (PIL resize, float32 array, truncated crop offsets, numpy
normalization), written out below. torchvision models: the transform published with the weights
the YAML names (`weights.transforms()`), found by the YAML's URL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import get_model_weights

from runner.config import PROJECT_ROOT, ModelConfig, PreprocessRecipe
from runner.data.transforms import load_cropped, normalize
from runner.models import weights
from tests.conftest import SAMPLE_ROOT, needs_sample, run_config

MODELS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "model").glob("*.yaml"))
# the two guides' models have the guides' procedures as reference (AlexNet: test_transforms.py)
GUIDE_MODELS = ("alexnet", "inceptionv4")
# MLPerf's OpenCV recipe on torchvision's architecture: its reference is MLPerf's script
# (tests/test_opencv_recipe.py), not the weights' transform
MLPERF_MODELS = ("resnet50_mlperf",)
TORCHVISION_MODELS = [m for m in MODELS if m not in GUIDE_MODELS + MLPERF_MODELS]
TOLERANCE = 1e-6


def guide_inceptionv4(path: Path) -> np.ndarray:
    """The InceptionV4 guide's preprocessing of one image, as its script does it."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    if not ((w <= h and w == 342) or (h <= w and h == 342)):
        image = image.resize((342, int(342 * h / w)) if w < h else (int(342 * w / h), 342),
                             Image.BILINEAR)
    img = np.array(image, dtype=np.float32)  # float32 before the crop
    height, width = img.shape[:2]
    top, left = int((height - 299) / 2), int((width - 299) / 2)
    img = img[top : top + 299, left : left + 299]
    img = img / 255.0
    img -= np.array([0.5, 0.5, 0.5], dtype=np.float32)
    img /= np.array([0.5, 0.5, 0.5], dtype=np.float32)
    return img.transpose(2, 0, 1)


def ours(path: Path, recipe: PreprocessRecipe) -> np.ndarray:
    return normalize(load_cropped(path, recipe)[None], recipe)[0]


def torchvision_weights(model: ModelConfig):
    """The torchvision weights enum entry whose URL the YAML names."""
    builder = model.arch.rpartition(".")[2]
    (entry,) = [w for w in get_model_weights(builder) if w.url == model.weights]
    return entry


def sample_images(generated_images: Path) -> list[Path]:
    real = sorted((SAMPLE_ROOT / "val").glob("*.JPEG"))
    return real or sorted((generated_images / "val").iterdir())


def worst_diff(paths: list[Path], recipe: PreprocessRecipe, reference) -> float:
    worst = 0.0
    for path in paths:
        expected = reference(path)
        got = ours(path, recipe)
        assert got.shape == expected.shape == (3, recipe.crop, recipe.crop)
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def test_inceptionv4_recipe_is_the_guides() -> None:
    recipe = run_config("model=inceptionv4").model.preprocess
    assert (recipe.resize, recipe.crop, recipe.crop_offset, recipe.interpolation) == (
        342, 299, "floor", "bilinear")
    assert (recipe.mean, recipe.std) == ([0.5] * 3, [0.5] * 3)


@needs_sample
def test_inceptionv4_matches_the_guide_script_on_real_images() -> None:
    paths = sorted((SAMPLE_ROOT / "val").glob("*.JPEG"))
    assert len(paths) == 100
    assert any(Image.open(p).mode == "L" for p in paths)  # the grayscale one is among them
    recipe = run_config("model=inceptionv4").model.preprocess
    assert worst_diff(paths, recipe, guide_inceptionv4) <= TOLERANCE


def test_inceptionv4_matches_the_guide_script_on_generated_images(generated_images: Path) -> None:
    recipe = run_config("model=inceptionv4").model.preprocess
    paths = sorted((generated_images / "val").iterdir())
    assert worst_diff(paths, recipe, guide_inceptionv4) <= TOLERANCE


def test_floor_and_round_offsets_differ_on_real_sizes(generated_images: Path) -> None:
    """The guide's truncated offset is not torchvision's rounded one: a recipe must name it."""
    rounded = PreprocessRecipe(resize=342, crop=299, crop_offset="round",
                               mean=[0.5] * 3, std=[0.5] * 3)
    paths = sample_images(generated_images)
    assert worst_diff(paths, rounded, guide_inceptionv4) > 0.01


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_yaml_names_published_weights_and_their_recipe(name: str) -> None:
    model = run_config(f"model={name}").model
    assert model.arch.startswith("torchvision.models.")
    entry = torchvision_weights(model)
    transform = entry.transforms()
    recipe = model.preprocess
    assert [recipe.resize] == list(transform.resize_size)
    assert [recipe.crop] == list(transform.crop_size)
    assert recipe.interpolation == transform.interpolation.value
    assert recipe.crop_offset == "round"  # torchvision's CenterCrop
    assert recipe.mean == list(transform.mean) and recipe.std == list(transform.std)
    assert model.num_classes == len(entry.meta["categories"]) and model.class_offset == 0
    # the checksum torch.hub checks: the hash prefix in the file name
    assert weights.source(model).checksum == model.weights_checksum
    assert model.weights.rsplit("-", 1)[1].startswith(model.weights_checksum.split(":")[1])


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_recipes_match_the_published_transform(name: str,
                                                           generated_images: Path) -> None:
    model = run_config(f"model={name}").model
    transform = torchvision_weights(model).transforms()

    def reference(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return transform(image.convert("RGB")).numpy()

    paths = sample_images(generated_images)
    with torch.no_grad():
        assert worst_diff(paths, model.preprocess, reference) <= TOLERANCE


def test_the_guides_models_and_a_few_torchvision_ones_are_shipped() -> None:
    assert set(GUIDE_MODELS) <= set(MODELS) and set(MLPERF_MODELS) <= set(MODELS)
    assert {"resnet50", "mobilenet_v3_large"} <= set(TORCHVISION_MODELS)
