"""ImageNet val as people keep it (`dataset.layout`).

`guide`: the Ascend guides' layout, `<root>/<images>/*.JPEG` + `<root>/<labels>` (lines
`<file name> <0-based class>`). `folders`: torchvision's ImageFolder layout,
`<root>/<images>/<wnid>/*.JPEG`, each folder one class named by its wnid; the class is the wnid's
index in the standard ImageNet-1k order (the sorted 1000 wnids, `imagenet_wnids.txt`, or the
root's own `synsets.txt`), never a renumbering of the folders present, so a subset keeps its
labels. `torchvision`: a root where `torchvision.datasets.ImageNet` extracted its archives,
read as folders. `auto` tells guide and folders apart from what the root holds.

An image is its file name in every layout (the wnid folder is no part of it): the listing is
sorted by file name, and the dataset's fingerprint (the preprocess key) is made of each image's
name, label, size and mtime, so the same files give the same key in either layout.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from runner.cache import digest_json
from runner.config import DatasetConfig, ModelConfig, RunConfig, SyntheticConfig
from runner.data import synthetic
from runner.errors import DatasetError
from runner.settings import runtime_only

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp")
GUIDE, FOLDERS, TORCHVISION = "guide", "folders", "torchvision"
# the standard 1000 ImageNet-1k wnids, sorted: a wnid's line number is its 0-based class
WNIDS_FILE = Path(__file__).with_name("imagenet_wnids.txt")
ROOT_SYNSETS = "synsets.txt"  # a root's own class list, one "<wnid> [name]" per line, if any
# what torchvision.datasets.ImageNet(root, split="val") reads, and writes when it extracts them
TORCHVISION_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_val.tar")
TORCHVISION_META = "meta.bin"

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
    root = dataset_root(cfg)
    layout = resolve_layout(root, cfg.images, cfg.labels, cfg.layout)
    if layout.name == FOLDERS:
        return _list_folders(root, cfg.images, num_classes, cfg.limit)
    return _list_samples(root, cfg.images, cfg.labels, num_classes, cfg.on_mismatch, cfg.limit)


# --- which layout a root holds ----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    name: str  # guide | folders: how the images are listed
    reason: str  # why, in words (the INFO line of dataset.layout=auto)


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as scan:
            return sorted(scan, key=lambda e: e.name)
    except OSError as error:
        raise DatasetError(f"folder {folder} cannot be read ({error.strerror})") from None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _found(root: Path) -> str:
    """What a root holds, for an error that says no layout fits it."""
    if not root.exists():
        return "nothing (it does not exist)"
    if not root.is_dir():
        return "nothing (it is not a folder)"
    try:
        entries = _entries(root)
    except DatasetError:
        return "nothing readable"
    if not entries:
        return "nothing (an empty folder)"
    names = [e.name + ("/" if _is_dir(e) else "") for e in entries]
    return _examples([_shown(n) for n in names])


def _layouts_accepted(images: str, labels: str) -> str:
    return (f"dataset.layout=auto accepts guide ({images}/*.JPEG and {labels}) or folders "
            f"({images}/<wnid>/*.JPEG)")


def _torchvision_hint(root: Path) -> str:
    if any((root / name).is_file() for name in TORCHVISION_ARCHIVES):
        return (f"; for torchvision's archives ({', '.join(TORCHVISION_ARCHIVES)}) pass "
                "dataset.layout=torchvision")
    return ""


def resolve_layout(root: Path, images: str, labels: str, layout: str) -> Layout:
    """The layout `root` is read in: `layout` itself, or for `auto` the one the root holds
    (logged, one INFO line); a DatasetError when none fits, before any work."""
    if layout in (GUIDE, FOLDERS):
        return Layout(layout, f"dataset.layout={layout}")
    if layout == TORCHVISION:
        found = _torchvision_layout(root, images)
        log.info("dataset.layout=torchvision: %s, read as folders (%s)", root, found.reason)
        return found
    found = _auto_layout(root, images, labels)
    log.info("dataset.layout=auto: %s is the %s layout (%s)", root, found.name, found.reason)
    return found


def _auto_layout(root: Path, images: str, labels: str) -> Layout:
    image_dir, label_file = root / images, root / labels
    accepted = _layouts_accepted(images, labels) + _torchvision_hint(root)
    if not image_dir.is_dir() and label_file.exists():
        # stage=score reads the label file alone: a root may hold no images
        return Layout(GUIDE, f"{labels} is there, without {images}/")
    if not image_dir.is_dir():
        raise DatasetError(f"image folder {image_dir} does not exist: check dataset.root={root}, "
                           f"which holds {_found(root)}; {accepted}")
    entries = _entries(image_dir)
    direct = [e.name for e in entries if _is_image(e.name)]
    folders = [e.name for e in entries if not _is_image(e.name) and _is_dir(e)]
    has_labels = label_file.exists()
    if direct:
        where = f"{labels} is there" if has_labels else f"but {labels} is missing"
        return Layout(GUIDE, f"{images}/ holds {len(direct)} images directly, {where}")
    if folders:
        return Layout(FOLDERS, f"{images}/ holds {len(folders)} class folders (e.g. "
                               f"{_shown(folders[0])}) and no image directly")
    if has_labels:
        return Layout(GUIDE, f"{labels} is there, though {images}/ holds no image")
    raise DatasetError(f"dataset.root={root} holds neither layout: {images}/ holds no image and "
                       f"no class folder, and {labels} is missing (the root holds "
                       f"{_found(root)}); {accepted}")


def _torchvision_layout(root: Path, images: str) -> Layout:
    """torchvision.datasets.ImageNet(root, split="val") extracts ILSVRC2012_img_val.tar into
    `<root>/val/<wnid>/` (and the devkit's labels into meta.bin): after that it is the folders
    layout. A run never writes into the dataset root (a key costs no work), so extracting is
    left to torchvision, once, by the command the error gives."""
    if images != "val":
        raise DatasetError(f"dataset.layout=torchvision reads {root}/val, where "
                           f"torchvision.datasets.ImageNet extracts the val images: leave "
                           f"dataset.images=val (not {images!r})")
    if (root / TORCHVISION_META).is_file() and (root / images).is_dir():
        return Layout(FOLDERS, f"{TORCHVISION_META} and {images}/ are there: "
                               "torchvision.datasets.ImageNet extracted its archives")
    archives = [name for name in TORCHVISION_ARCHIVES if (root / name).is_file()]
    if len(archives) == len(TORCHVISION_ARCHIVES):
        raise DatasetError(
            f"dataset.layout=torchvision: {root} holds {' and '.join(archives)}, not yet "
            f"extracted (a run never writes into the dataset root): extract them once with "
            f"python -c \"from torchvision.datasets import ImageNet; ImageNet({str(root)!r}, "
            f"split='val')\" (it checks their md5 and writes val/<wnid>/ and "
            f"{TORCHVISION_META}), then run again"
        )
    raise DatasetError(
        f"dataset.layout=torchvision: {root} holds neither torchvision's extracted val images "
        f"({TORCHVISION_META} and val/<wnid>/) nor both its archives "
        f"({', '.join(TORCHVISION_ARCHIVES)}): found {_found(root)}"
    )


# --- the folders layout -----------------------------------------------------------------------


def class_list(root: Path) -> tuple[dict[str, int], str]:
    """`{wnid: class}` and where it comes from: the root's own synsets.txt if it has one, else
    the standard ImageNet-1k order (the sorted 1000 wnids: what torchvision and the guides use)."""
    own = root / ROOT_SYNSETS
    path = own if own.is_file() else WNIDS_FILE
    source = str(own) if path == own else "the ImageNet-1k wnids"
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"class list {path} cannot be read ({error})") from None
    classes: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] in classes:
            raise DatasetError(f"{path}:{number}: {_shown(parts[0])} is listed again: a class "
                               "list names each wnid once")
        classes[parts[0]] = len(classes)
    if not classes:
        raise DatasetError(f"class list {path} names no class")
    return classes, source


def _list_folders(root: Path, images: str, num_classes: int | None,
                  limit: int | None) -> list[Sample]:
    """`<root>/<images>/<wnid>/*` in natural file-name order, each labelled with its wnid's
    class in the class list; the name of an image is its file name alone."""
    image_dir = root / images
    if not image_dir.is_dir():
        raise DatasetError(
            f"image folder {image_dir} does not exist: check dataset.root={root} (the folder "
            f"holding {images}/<wnid>/) and dataset.images"
        )
    classes, source = class_list(root)
    entries = _entries(image_dir)
    direct = [e.name for e in entries if _is_image(e.name)]
    if direct:
        raise DatasetError(
            f"{image_dir}: {len(direct)} images lie directly in {images}/, outside any class "
            f"folder (e.g. {_examples(direct)}): dataset.layout=folders reads "
            f"{images}/<wnid>/*.JPEG; with a label file pass dataset.layout=guide"
        )
    folders = [e for e in entries if _is_dir(e)]
    unknown = [e.name for e in folders if e.name not in classes]
    if unknown:
        more = f" (and {len(unknown) - 1} more: {_examples(unknown[1:])})" if unknown[1:] else ""
        raise DatasetError(
            f"folder {image_dir / unknown[0]} is not a class: {_shown(unknown[0])} is not a wnid "
            f"of {source}{more}; in dataset.layout=folders each folder of {images}/ is one "
            "class named by its wnid (e.g. n01440764): remove or rename it"
        )
    samples: list[Sample] = []
    folder_of: dict[str, str] = {}
    for folder in folders:
        for entry in _entries(Path(folder.path)):
            if not _is_image(entry.name):
                continue
            if entry.name in folder_of:
                raise DatasetError(
                    f"{image_dir}: {_shown(entry.name)} is in both {folder_of[entry.name]}/ and "
                    f"{folder.name}/: an image is named by its file name (in reports and result "
                    "files), so names must be unique across class folders"
                )
            folder_of[entry.name] = folder.name
            samples.append(Sample(entry.name, Path(entry.path), classes[folder.name]))
    if not samples:
        raise DatasetError(
            f"image folder {image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its "
            f"{len(folders)} class folders: check dataset.root and dataset.images"
        )
    samples.sort(key=lambda s: natural_key(s.name))
    if num_classes is not None:
        outside = [f"{folder_of[s.name]}/ (class {s.label})" for s in samples
                   if s.label >= num_classes]
        if outside:
            raise DatasetError(
                f"{image_dir}: {len(outside)} images in class folders outside 0..{num_classes - 1},"
                f" the classes of the model (e.g. {_examples(sorted(set(outside)))}): the "
                "folders do not fit model.num_classes / model.class_offset"
            )
    if limit is not None:
        samples = samples[:limit]
    _refuse_non_regular(samples)
    return samples


# --- the guide layout -------------------------------------------------------------------------


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


def fingerprint(samples: list[Sample]) -> str:
    """Identity of the dataset's content: each listed image's file name, label, size and mtime,
    in listing order.

    Hashing 50,000 JPEGs on every run would cost minutes; (size, mtime) is what make and rsync
    trust for the same question. Nothing of the layout is in it (not the label file, which
    beyond the listed images' labels cannot change the output, nor an image's wnid folder): the
    same files, moved from one layout to the other keeping their mtimes (mv, cp -p, rsync -a,
    hard links), are the same dataset.
    """
    stats = [(s.name, s.label, *_size_and_mtime(s.path)) for s in samples]
    return digest_json({"images": stats})


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
    layout: str = runtime_only(GUIDE)  # guide | folders, resolved: how it is listed

    @classmethod
    def from_config(cls, cfg: RunConfig) -> DatasetSpec:
        spec = cls.for_labels(cfg)
        if spec.synthetic is not None:
            return spec
        # listing checks the folder, the label file and the labels' range, before any work
        return dataclasses.replace(spec, fingerprint=fingerprint(spec._list()))

    @classmethod
    def for_labels(cls, cfg: RunConfig) -> DatasetSpec:
        """The dataset with its layout resolved (stage=score reads its labels, no image)."""
        data = cfg.dataset
        root = dataset_root(data)
        layout = GUIDE  # a synthetic dataset is generated in the guide layout
        if data.synthetic is None:
            layout = resolve_layout(root, data.images, data.labels, data.layout).name
        return cls(name=data.name, limit=data.limit, on_mismatch=data.on_mismatch,
                   label_classes=cfg.model.num_classes - cfg.model.class_offset,
                   synthetic=copy.deepcopy(data.synthetic), fingerprint=None,
                   root=str(root), images=data.images, labels=data.labels, layout=layout)

    @property
    def label_file(self) -> Path:
        return Path(self.root) / self.labels

    @property
    def label_source(self) -> Path:
        """Where the labels are read: the label file, or the folder of class folders."""
        return Path(self.root) / self.images if self.layout == FOLDERS else self.label_file

    def labels_by_name(self) -> dict[str, int]:
        """`{image file name: class}` of every image the layout labels (no limit, no image
        opened): the label file's lines, or the class folders' images."""
        if self.layout == FOLDERS:
            return {s.name: s.label for s in _list_folders(Path(self.root), self.images,
                                                           self.label_classes, None)}
        return read_labels(self.label_file)

    def _list(self) -> list[Sample]:
        if self.layout == FOLDERS:
            return _list_folders(Path(self.root), self.images, self.label_classes, self.limit)
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
