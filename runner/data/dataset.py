"""ImageNet val in the guides' layout: `<root>/<images>/*.JPEG` + `<root>/<labels>`."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from runner.cache import digest_file, digest_json
from runner.config import DatasetConfig, ModelConfig, RunConfig, SyntheticConfig
from runner.data import synthetic
from runner.errors import DatasetError
from runner.settings import runtime_only

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp")

log = logging.getLogger("runner")


@dataclass(frozen=True)
class Sample:
    name: str  # file name, as in the label file
    path: Path
    label: int  # 0-based ImageNet class


def natural_key(name: str) -> list[object]:
    """Sort key that puts img2 before img10, as ais_bench orders its input files."""
    # isdecimal, not isdigit: "²" is a digit that int() refuses
    return [int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", name)]


def dataset_root(cfg: DatasetConfig) -> Path:
    if cfg.root is None:
        raise DatasetError(
            f"dataset.root is not set for dataset={cfg.name}: pass dataset.root=/path/to/folder "
            f"holding {cfg.images}/ and {cfg.labels}, or dataset=synthetic for generated images"
        )
    return Path(cfg.root).expanduser()


# "<file name> <class id>": the class id is a plain (ASCII) integer of sensible length
_CLASS_ID = re.compile(r"-?[0-9]{1,9}")
_EXAMPLES = 3  # how many offending names an error or warning shows


def _shown(name: str) -> str:
    """A name from a file as it can be printed on one line of a terminal."""
    return name if name.isprintable() else repr(name)


def _examples(names: list[str]) -> str:
    shown = ", ".join(_shown(n) for n in names[:_EXAMPLES])
    return f"{shown}, ..." if len(names) > _EXAMPLES else shown


def _plain_file_name(name: str) -> bool:
    """A name that can only mean a file directly inside the image folder."""
    return name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def read_labels(path: Path, num_classes: int | None = None) -> dict[str, int]:
    """`{file name: class}` from a label file, refusing anything it cannot mean unambiguously.

    `num_classes`, when given, is the number of classes the labels index (0-based); a label
    outside 0..num_classes-1 means the file does not fit the model (or is 1-based).
    """
    if not path.exists():
        raise DatasetError(
            f"label file {path} does not exist: check dataset.root and dataset.labels"
        )
    if not path.is_file():
        raise DatasetError(f"label file {path} is not a file: check dataset.labels")
    try:
        # utf-8-sig: a byte order mark (Windows editors write one) is not part of the first name
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise DatasetError(f"label file {path} cannot be read ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"label file {path} is not UTF-8 text (byte {error.start}): is it the right file?"
        ) from None
    labels: dict[str, int] = {}
    first_line: dict[str, int] = {}
    out_of_range: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not _CLASS_ID.fullmatch(parts[1]):
            raise DatasetError(
                f"{path}:{number}: expected '<file name> <class id>' "
                f"(e.g. 'ILSVRC2012_val_00000001.JPEG 65'), got {line.strip()[:200]!r}"
            )
        name, label = parts[0], int(parts[1])
        if not _plain_file_name(name):
            raise DatasetError(
                f"{path}:{number}: {name[:200]!r} is not a plain file name: names in the label "
                "file must be files directly inside the image folder (no '/', '..')"
            )
        if name in labels:
            raise DatasetError(
                f"{path}:{number}: {_shown(name)} is listed again (first on line "
                f"{first_line[name]}): "
                "keep one label per image"
            )
        if num_classes is not None and not 0 <= label < num_classes:
            out_of_range.append(f"line {number} '{_shown(name)} {label}'")
        labels[name] = label
        first_line[name] = number
    if not labels:
        raise DatasetError(f"label file {path} has no labels")
    if out_of_range:
        raise DatasetError(
            f"{path}: {len(out_of_range)} labels outside 0..{num_classes - 1}, the classes of "
            f"the model (e.g. {_examples(out_of_range)}): the label file does not fit "
            "model.num_classes / model.class_offset (is it 1-based?)"
        )
    return labels


def list_samples(cfg: DatasetConfig, model: ModelConfig | None = None) -> list[Sample]:
    """The labelled images, in natural file-name order, limited to `cfg.limit`.

    With `model`, labels are checked against its classes (label + class_offset < num_classes).
    """
    num_classes = None if model is None else model.num_classes - model.class_offset
    return _list_samples(dataset_root(cfg), cfg.images, cfg.labels, num_classes,
                         cfg.on_mismatch, cfg.limit)


def _list_samples(root: Path, images: str, labels_name: str, num_classes: int | None,
                  on_mismatch: str, limit: int | None) -> list[Sample]:
    image_dir = root / images
    if not image_dir.is_dir():
        raise DatasetError(
            f"image folder {image_dir} does not exist: check dataset.root={root} (the folder "
            f"holding {images}/ and {labels_name}) and dataset.images"
        )
    labels = read_labels(root / labels_name, num_classes)
    try:
        names = sorted(
            (p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
            key=natural_key,
        )
    except OSError as error:
        raise DatasetError(f"image folder {image_dir} cannot be read ({error.strerror})") from None
    if not names:
        raise DatasetError(
            f"image folder {image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}): "
            "check dataset.root and dataset.images"
        )
    unlabelled = [n for n in names if n not in labels]
    present = set(names)
    missing = sorted((n for n in labels if n not in present), key=natural_key)
    if unlabelled or missing:
        problems = []
        if unlabelled:
            problems.append(f"{len(unlabelled)} images without a label (e.g. "
                            f"{_examples(unlabelled)})")
        if missing:
            problems.append(f"{len(missing)} labels without an image (e.g. {_examples(missing)})")
        if on_mismatch == "stop":
            raise DatasetError(
                f"{root}: {' and '.join(problems)}; fix {labels_name} or pass "
                "dataset.on_mismatch=skip to use only the labelled images"
            )
        log.warning("%s: skipping %s (dataset.on_mismatch=skip)", root, " and ".join(problems))
    samples = [Sample(n, image_dir / n, labels[n]) for n in names if n in labels]
    if limit is not None:
        samples = samples[:limit]
    _refuse_non_regular(samples)
    if not samples:
        raise DatasetError(f"{root}: no image has a label in {labels_name}")
    return samples


def _kind(path: Path) -> str:
    """What a path that is not a regular file is, in words."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return "missing"
    if stat.S_ISLNK(mode):
        try:
            mode = path.stat().st_mode
        except OSError:
            return "a broken symlink"
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


def _refuse_non_regular(samples: list[Sample]) -> None:
    """Only regular files are images: opening a FIFO blocks forever (and ignores SIGTERM while it
    does), a device can be endless, a broken symlink cannot be read. Checked with stat, before
    any file is opened."""
    odd = [s for s in samples if not s.path.is_file()]
    if odd:
        shown = ", ".join(f"{s.path} ({_kind(s.path)})" for s in odd[:_EXAMPLES])
        more = f" and {len(odd) - _EXAMPLES} more" if len(odd) > _EXAMPLES else ""
        raise DatasetError(
            f"{len(odd)} image entries are not regular files: {shown}{more}; replace them with "
            "the image files, or remove them and their lines in the label file"
        )


def fingerprint(cfg: DatasetConfig, samples: list[Sample]) -> str:
    """Identity of the dataset's content: label file hash and each image's name, size and mtime.

    Hashing 50,000 JPEGs on every run would cost minutes; (size, mtime) is what make and rsync
    trust for the same question.
    """
    return _fingerprint(dataset_root(cfg) / cfg.labels, samples)


def _fingerprint(label_file: Path, samples: list[Sample]) -> str:
    stats = [(s.name, s.label, *_size_and_mtime(s.path)) for s in samples]
    return digest_json({"labels": digest_file(label_file), "images": stats})


def _size_and_mtime(path: Path) -> tuple[int, int]:
    status = path.stat()  # once: each stat of 50,000 images on network storage is a round trip
    return status.st_size, status.st_mtime_ns


@dataclass(frozen=True)
class DatasetSpec:
    """The dataset a run reads, as one value. A real dataset is identified by its content's
    fingerprint; a synthetic one by its generator's settings (it is generated on first use, so
    computing a key never writes it)."""

    name: str
    limit: int | None
    on_mismatch: str
    label_classes: int  # labels must lie in 0..label_classes-1 (the model's classes - offset)
    synthetic: SyntheticConfig | None
    fingerprint: str | None  # None for a synthetic dataset
    root: str = runtime_only()  # where it is: the fingerprint says what it is
    images: str = runtime_only()
    labels: str = runtime_only()

    @classmethod
    def from_config(cls, cfg: RunConfig) -> DatasetSpec:
        data = cfg.dataset
        root = dataset_root(data)
        label_classes = cfg.model.num_classes - cfg.model.class_offset
        spec = cls(name=data.name, limit=data.limit, on_mismatch=data.on_mismatch,
                   label_classes=label_classes, synthetic=copy.deepcopy(data.synthetic),
                   fingerprint=None, root=str(root), images=data.images, labels=data.labels)
        if spec.synthetic is not None:
            return spec
        # listing checks the folder, the label file and the labels' range, before any work
        return dataclasses.replace(spec, fingerprint=_fingerprint(spec.label_file,
                                                                  spec._list()))

    @classmethod
    def for_labels(cls, cfg: RunConfig) -> DatasetSpec:
        """The dataset as its label file alone (stage=score reads no image): no listing."""
        data = cfg.dataset
        return cls(name=data.name, limit=data.limit, on_mismatch=data.on_mismatch,
                   label_classes=cfg.model.num_classes - cfg.model.class_offset,
                   synthetic=copy.deepcopy(data.synthetic), fingerprint=None,
                   root=str(dataset_root(data)), images=data.images, labels=data.labels)

    @property
    def label_file(self) -> Path:
        return Path(self.root) / self.labels

    def _list(self) -> list[Sample]:
        return _list_samples(Path(self.root), self.images, self.labels, self.label_classes,
                             self.on_mismatch, self.limit)

    def check(self) -> None:
        """A synthetic dataset's folder must be creatable; a real one was checked by listing."""
        if self.synthetic is not None:
            check_creatable(Path(self.root), "dataset.root")

    def ensure(self) -> None:
        """Generate a synthetic dataset unless it is there."""
        if self.synthetic is not None:
            synthetic.ensure(Path(self.root), self.images, self.labels, self.synthetic)

    def samples(self) -> list[Sample]:
        """The labelled images (a synthetic dataset generated first if needed)."""
        self.ensure()
        return self._list()


def check_creatable(folder: Path, key: str) -> None:
    """`folder` exists, or its nearest existing parent is a writable folder: no work is done."""
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DatasetError(f"{key}={folder} cannot be created ({parent} is not a writable "
                           f"folder): pass {key}=/a/writable/folder")
