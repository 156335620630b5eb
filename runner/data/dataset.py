"""ImageNet val in the guides' layout: `<root>/<images>/*.JPEG` + `<root>/<labels>`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from runner.cache import digest_file, digest_json
from runner.config import DatasetConfig
from runner.errors import DatasetError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp")


@dataclass(frozen=True)
class Sample:
    name: str  # file name, as in the label file
    path: Path
    label: int  # 0-based ImageNet class


def natural_key(name: str) -> list[object]:
    """Sort key that puts img2 before img10, as ais_bench orders its input files."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def dataset_root(cfg: DatasetConfig) -> Path:
    if cfg.root is None:
        raise DatasetError(
            f"dataset.root is not set for dataset={cfg.name}: pass dataset.root=/path/to/folder "
            f"holding {cfg.images}/ and {cfg.labels}, or dataset=synthetic for generated images"
        )
    return Path(cfg.root).expanduser()


def read_labels(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise DatasetError(
            f"label file {path} does not exist: check dataset.root and dataset.labels"
        )
    labels: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetError(
                f"{path}:{number}: expected '<file name> <class id>', got {line.strip()!r}"
            )
        labels[parts[0]] = int(parts[1])
    if not labels:
        raise DatasetError(f"label file {path} has no labels")
    return labels


def list_samples(cfg: DatasetConfig) -> list[Sample]:
    """The labelled images, in natural file-name order, limited to `cfg.limit`."""
    root = dataset_root(cfg)
    image_dir = root / cfg.images
    if not image_dir.is_dir():
        raise DatasetError(
            f"image folder {image_dir} does not exist: check dataset.root and dataset.images"
        )
    labels = read_labels(root / cfg.labels)
    names = sorted(
        (p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
        key=natural_key,
    )
    if not names:
        raise DatasetError(
            f"image folder {image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    unlabelled = [n for n in names if n not in labels]
    present = set(names)
    missing = [n for n in labels if n not in present]
    if (unlabelled or missing) and cfg.on_mismatch == "stop":
        problems = []
        if unlabelled:
            problems.append(f"{len(unlabelled)} images without a label (e.g. {unlabelled[0]})")
        if missing:
            problems.append(f"{len(missing)} labels without an image (e.g. {missing[0]})")
        raise DatasetError(
            f"{root}: {' and '.join(problems)}; fix {cfg.labels} or pass dataset.on_mismatch=skip"
        )
    samples = [Sample(n, image_dir / n, labels[n]) for n in names if n in labels]
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    if not samples:
        raise DatasetError(f"{root}: no image has a label in {cfg.labels}")
    return samples


def fingerprint(cfg: DatasetConfig, samples: list[Sample]) -> str:
    """Identity of the dataset's content: label file hash and each image's name, size and mtime.

    Hashing 50,000 JPEGs on every run would cost minutes; (size, mtime) is what make and rsync
    trust for the same question.
    """
    stats = [(s.name, s.label, s.path.stat().st_size, s.path.stat().st_mtime_ns) for s in samples]
    return digest_json(
        {"labels": digest_file(dataset_root(cfg) / cfg.labels), "images": stats}
    )
