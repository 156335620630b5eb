"""The preprocessing recipe, implemented once for every model.

`load_cropped` does the lossy, image-dependent part (decode, RGB, resize shorter side, center crop)
and returns the exact uint8 pixels, which is what the cache keeps. Two families: `library=pil`
decodes and resizes as the guides' PIL scripts and torchvision do, `library=opencv` as scripts
built on cv2.imread/cv2.resize do (MLPerf Inference's ResNet50 reference, `pre_process_vgg` in
mlcommons/inference vision/classification_and_detection/python/dataset.py, read at commit
073ef8444abf42dde375d7669ded638e8fd2e981). `normalize` does the float part (optional /255, -mean,
/std, channel order, HWC->CHW) when a batch is fed, with the same float32 operations, in the same
order, as torchvision's ToTensor + Normalize (or MLPerf's float32 mean subtraction), so the tensors
are bit-identical to the reference.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from runner.config import OPENCV_INTERPOLATIONS, Cropping, Normalization, PreprocessRecipe
from runner.errors import DatasetError

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
_OPENCV_FLAGS = {name: getattr(cv2, name) for name in OPENCV_INTERPOLATIONS}
# the preprocess stage already runs one decoding process per core: OpenCV's own thread pool on
# top only oversubscribes them (measured: 2.7 vs 3.0 ms per image single-process on 2 cores).
# Results do not depend on it: cv2.resize splits rows between threads, each row computed alike.
cv2.setNumThreads(1)


def resized_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side set and the longer one int(shorter * long / short)."""
    if width <= height:
        return shorter_side, int(shorter_side * height / width)
    return int(shorter_side * width / height), shorter_side


# The decompression bomb check bounds a source image's pixels; this bounds the resized image, which
# a thin image makes huge (1x8000 -> 256x2048000, 1.5 GB) though its file has a few KB. 16 Mpx
# allows aspect ratios up to 256:1 at resize 256, far beyond any photo.
MAX_RESIZED_PIXELS = 16 * 1024 * 1024


def check_resized_size(path: Path, source: tuple[int, int], size: tuple[int, int]) -> None:
    """Refuse, before decoding, an image whose resize would take gigabytes."""
    if size[0] * size[1] > MAX_RESIZED_PIXELS:
        (width, height), short = source, min(source)
        raise DatasetError(
            f"image {path} is {width}x{height} (aspect ratio {max(source) / max(short, 1):.0f}:1):"
            f" resizing its shorter side makes it {size[0]}x{size[1]}, more than "
            f"{MAX_RESIZED_PIXELS >> 20} Mpx; crop it, or remove it and its line in the label file"
        )


def crop_offset(size: int, crop: int, rule: str) -> int:
    if rule == "round":
        return round((size - crop) / 2.0)  # torchvision CenterCrop: half to even
    return int((size - crop) / 2)  # the InceptionV4 guide


def to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """8-bit RGB, as torchvision's `convert("RGB")` gives it, with explicit rules where that
    would be silently wrong: PIL clips 16-bit gray to 255, so 16-bit images keep their high
    byte (what OpenCV's imread does); 32-bit integer or float images are refused."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        high_bytes = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(high_bytes, "L").convert("RGB")
    if image.mode in ("I", "F"):
        raise DatasetError(
            f"image {path} has 32-bit pixels (mode {image.mode}): convert it to 8-bit RGB or "
            "remove it and its line in the label file"
        )
    return image.convert("RGB")  # L, P, RGBA, CMYK, YCbCr ...: PIL's conversion, as torchvision


def load_cropped(path: Path, recipe: PreprocessRecipe | Cropping) -> np.ndarray:
    """Decoded, resized, center-cropped RGB pixels of one image: uint8, (crop, crop, 3)."""
    if isinstance(recipe, PreprocessRecipe):
        recipe = recipe.cropping()
    if recipe.library == "opencv":
        return _load_cropped_opencv(path, recipe)
    return _load_cropped_pil(path, recipe)


def _load_cropped_pil(path: Path, recipe: Cropping) -> np.ndarray:
    """The same pixels as the guides' scripts (PIL decode, `.convert('RGB')`, PIL resize, crop); the
    crop is taken in PIL, so only the crop is copied out, and an RGB image is not copied first.
    """
    try:
        with Image.open(path) as image:
            check_resized_size(path, image.size, resized_size(*image.size, recipe.shorter_side))
            # decoding happens here or, for an RGB file, in resize/crop: a truncated file fails
            rgb = image if image.mode == "RGB" else to_rgb(image, path)
            size = resized_size(*rgb.size, recipe.shorter_side)
            if size != rgb.size:
                rgb = rgb.resize(size, _PIL_FILTERS[recipe.interpolation])
            left = crop_offset(size[0], recipe.crop, recipe.crop_offset)
            top = crop_offset(size[1], recipe.crop, recipe.crop_offset)
            return np.asarray(rgb.crop((left, top, left + recipe.crop, top + recipe.crop)))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(
            f"image {path} cannot be decoded ({type(error).__name__}: {error}): replace it, or "
            "remove it and its line in the label file"
        ) from None


def _load_cropped_opencv(path: Path, recipe: Cropping) -> np.ndarray:
    """The pixels of a cv2.imread + cv2.resize script such as MLPerf's `pre_process_vgg`.

    Decoding is cv2.imread(path, IMREAD_COLOR), the reference's own call, so every image kind is
    what it gives: grayscale replicated into 3 channels, CMYK converted by OpenCV's formula (not
    PIL's), alpha dropped, 16-bit reduced to 8, EXIF orientation applied, a PNG named .JPEG
    decoded by its content, and a truncated JPEG decoded with its missing rows filled (libjpeg
    prints a warning): the PIL recipe refuses that file, MLPerf's reference does not.

    The reference converts BGR->RGB before resizing; here the resize runs on BGR and only the
    crop is converted. cv2.resize treats channels independently, so the uint8 values are the same
    (the tests check it), at a fraction of the conversion's cost. cv2.resize is called even when
    the size does not change, as the reference does (OpenCV then copies).
    """
    try:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as error:  # e.g. more pixels than OpenCV's CV_IO_MAX_IMAGE_PIXELS
        raise DatasetError(
            f"image {path} cannot be decoded by OpenCV ({str(error).strip().splitlines()[-1]}): "
            "replace it, or remove it and its line in the label file"
        ) from None
    if bgr is None:  # imread signals every failure (missing, unknown format, corrupt) by None
        raise DatasetError(
            f"image {path} cannot be decoded by OpenCV (cv2.imread gave nothing): replace it, "
            "or remove it and its line in the label file"
        )
    height, width = bgr.shape[:2]
    size = resized_size(width, height, recipe.shorter_side)
    check_resized_size(path, (width, height), size)  # a thin image: refused, as the PIL path does
    resized = cv2.resize(bgr, size, interpolation=_OPENCV_FLAGS[recipe.interpolation])
    left = crop_offset(size[0], recipe.crop, recipe.crop_offset)
    top = crop_offset(size[1], recipe.crop, recipe.crop_offset)
    crop = resized[top : top + recipe.crop, left : left + recipe.crop]
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)  # a new contiguous array, RGB as the cache keeps


def normalize(batch: np.ndarray, recipe: PreprocessRecipe | Normalization) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W), or (N, H, W, 3) for layout NHWC, in the
    recipe's channel order, normalized: value (/255 if divide_by_255) - mean, / std, with the
    recipe's mean and std. With `on_device` the batch is returned as it is (uint8 NHWC RGB): the
    model or the chip's AIPP does the rest.

    A uint8 channel takes 256 values, so each value's result is computed once (`_lookup_table`)
    and looked up with cv2.LUT: the same numbers, bit for bit. Where inference runs on the same
    CPU cores, this time adds to every batch of the e2e pass: computing every pixel took about
    3x the time of numpy's lookup (np.take turns uint8 indices into int64 first), which took
    about 3x the time of cv2.split + cv2.LUT (1.9 vs 5.9 ms per AlexNet batch of 16).
    """
    if getattr(recipe, "on_device", False):
        # model.preprocess.on_device=true: the chip normalizes; the model takes the crops as
        # cached (runner.models.on_device, runner.backends.aipp)
        return np.ascontiguousarray(batch)
    table = _lookup_table(tuple(recipe.mean), tuple(recipe.std), recipe.divide_by_255)
    # the cache holds RGB; output channel c of a BGR model reads cached channel 2 - c
    bgr = recipe.channel_order == "BGR"
    count, height, width, _ = batch.shape
    if recipe.layout == "NHWC":
        # one 3-channel LUT over the interleaved pixels: channel c looks up table row c
        pixels = np.ascontiguousarray(batch[..., ::-1] if bgr else batch)
        interleaved_table = np.ascontiguousarray(table.T).reshape(1, 256, 3)
        looked_up = cv2.LUT(pixels.reshape(count * height, width, 3), interleaved_table)
        return looked_up.reshape(count, height, width, 3)
    sources = (2, 1, 0) if bgr else (0, 1, 2)
    out = np.empty((count, 3, height, width), dtype=np.float32)
    for index in range(count):
        planes = cv2.split(batch[index])  # HWC -> three contiguous (H, W) planes
        for channel, source in enumerate(sources):
            cv2.LUT(planes[source], table[channel], dst=out[index, channel])
    return out


@cache
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...],
                  divide_by_255: bool) -> np.ndarray:
    """(3, 256) float32: channel c's value v -> (v / 255 - mean[c]) / std[c] (or without the /255),
    with the same float32 operations, in the same order, as torchvision's ToTensor + Normalize;
    without the /255 and with std 1, MLPerf's float32 `img -= means` (x / 1 is exact)."""
    table = np.arange(256, dtype=np.float32)[None, :].repeat(3, axis=0)
    if divide_by_255:
        table /= np.float32(255)
    table -= np.asarray(mean, dtype=np.float32)[:, None]
    table /= np.asarray(std, dtype=np.float32)[:, None]
    return table
