"""The AlexNet recipe gives the same tensors as torchvision's reference transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from runner.config import PreprocessRecipe
from runner.data.transforms import crop_offset, load_cropped, normalize, resized_size
from tests.conftest import SAMPLE_ROOT, needs_sample

ALEXNET = PreprocessRecipe()


def torchvision_reference(path: Path) -> np.ndarray:
    transform = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    with Image.open(path) as image:
        return transform(image.convert("RGB")).numpy()


def ours(path: Path) -> np.ndarray:
    return normalize(load_cropped(path, ALEXNET)[None], ALEXNET)[0]


def test_cached_pixels_are_uint8_and_a_quarter_of_the_float_file(generated_images: Path) -> None:
    crop = load_cropped(next((generated_images / "val").iterdir()), ALEXNET)
    assert crop.dtype == np.uint8 and crop.shape == (224, 224, 3)
    assert crop.nbytes * 4 == 602112  # the guide's float32 .bin file


def test_generated_images_match_torchvision_bit_for_bit(generated_images: Path) -> None:
    for path in sorted((generated_images / "val").iterdir()):
        np.testing.assert_array_equal(ours(path), torchvision_reference(path))


@needs_sample
def test_real_images_match_torchvision_bit_for_bit() -> None:
    paths = sorted((SAMPLE_ROOT / "val").glob("*.JPEG"))
    assert len(paths) == 100
    worst = max(float(np.abs(ours(p) - torchvision_reference(p)).max()) for p in paths)
    assert worst == 0.0


@needs_sample
def test_grayscale_image_becomes_three_equal_channels() -> None:
    path = SAMPLE_ROOT / "val" / "n03908714_pencil_sharpener.JPEG"
    with Image.open(path) as image:
        assert image.mode == "L"
    crop = load_cropped(path, ALEXNET)
    assert crop.shape == (224, 224, 3)
    assert (crop[..., 0] == crop[..., 1]).all() and (crop[..., 1] == crop[..., 2]).all()


@pytest.mark.parametrize(
    ("size", "expected"),
    [((500, 375), (341, 256)), ((375, 500), (256, 341)), ((256, 256), (256, 256))],
)
def test_resized_size_keeps_aspect_like_torchvision(size: tuple[int, int],
                                                    expected: tuple[int, int]) -> None:
    assert resized_size(*size, 256) == expected
    image = Image.new("RGB", size)
    assert transforms.Resize(256)(image).size == expected


def test_crop_offset_rules() -> None:
    assert crop_offset(257, 224, "round") == 16  # round(16.5) is 16: half to even
    assert crop_offset(259, 224, "round") == 18  # round(17.5) is 18
    assert crop_offset(259, 224, "floor") == 17


def test_normalize_matches_torch_ops_on_random_pixels() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    expected = transforms.Normalize(ALEXNET.mean, ALEXNET.std)(
        torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255))
    np.testing.assert_array_equal(normalize(pixels, ALEXNET), expected.numpy())


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
@pytest.mark.parametrize("divide_by_255", [True, False])
def test_normalize_in_every_layout_and_channel_order_matches_torch_ops(
        layout: str, channel_order: str, divide_by_255: bool) -> None:
    """The lookup (cv2.LUT on planes, or on interleaved pixels for NHWC) is the arithmetic: a
    batch of all 256 values per channel, odd sizes, against torch's float32 ops."""
    mean = (0.485, 0.456, 0.406) if divide_by_255 else (123.68, 116.78, 103.94)
    std = (0.229, 0.224, 0.225) if divide_by_255 else (1.0, 1.0, 1.0)
    recipe = PreprocessRecipe(mean=mean, std=std, divide_by_255=divide_by_255,
                              channel_order=channel_order, layout=layout)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(3, 16, 19, 3), dtype=np.uint8)
    pixels[0].reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]  # every value
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    if channel_order == "BGR":
        tensor = tensor.flip(1)
    expected = transforms.Normalize(mean, std)(tensor.div(255) if divide_by_255 else tensor)
    if layout == "NHWC":
        expected = expected.permute(0, 2, 3, 1)
    fed = normalize(pixels, recipe)
    assert fed.dtype == np.float32 and fed.flags.c_contiguous
    np.testing.assert_array_equal(fed, expected.contiguous().numpy())
