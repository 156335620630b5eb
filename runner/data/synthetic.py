"""Generated JPEGs in the guides' layout, so every stage runs without ImageNet or a network."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from runner.config import SyntheticConfig


def _image(rng: np.random.Generator, index: int) -> Image.Image:
    """A smooth colour field with noise, of a random size; every 16th image is grayscale."""
    width, height = (int(v) for v in rng.integers(180, 520, size=2))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.005, 0.05), rng.uniform(0.005, 0.05), rng.uniform(0, 6.3)
        wave = 127.5 + 100 * np.sin(fx * x + fy * y + phase)
        channels.append(wave + rng.normal(0, 12, size=wave.shape))
    pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    return image.convert("L") if index % 16 == 15 else image


def generate(root: Path, images: str, labels: str, spec: SyntheticConfig) -> None:
    """Write `spec.num_images` JPEGs and their label file under `root`, atomically."""
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / images).mkdir(parents=True)
    rng = np.random.default_rng(spec.seed)
    lines = []
    for index in range(spec.num_images):
        name = f"synthetic_{index + 1:08d}.JPEG"
        _image(rng, index).save(tmp / images / name, quality=90)
        lines.append(f"{name} {int(rng.integers(0, 1000))}\n")
    (tmp / labels).write_text("".join(lines))
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished the same folder first
        shutil.rmtree(tmp, ignore_errors=True)


def ensure(root: Path, images: str, labels: str, spec: SyntheticConfig) -> None:
    """Generate the synthetic dataset described by `spec` unless it is already there."""
    if not (root / labels).is_file():
        generate(root, images, labels, spec)
