"""Property-based tests: whatever the label file holds and whatever overrides a user types, the
runner either accepts them or raises an error it explains in one line, never an unexpected
exception (which the CLI would report as "unexpected ...")."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from runner.cli import describe
from runner.config import DatasetConfig, ModelConfig
from runner.data import dataset
from runner.errors import DatasetError
from runner.pipeline import check_order
from tests.conftest import run_config

IMAGES = ("a.JPEG", "b.JPEG", "img10.JPEG")

# --- label files ----------------------------------------------------------------------------

names = st.one_of(
    st.sampled_from([*IMAGES, "d.JPEG", "../a.JPEG", "/etc/passwd", "sub/a.JPEG", "..", ".",
                     "a.JPEG\x00", "C:\\a.JPEG", "A.jpeg", "\u00b2", "img\u00b2",
                     "\x1b[31mred"]),
    st.text(min_size=1, max_size=12),
)
class_ids = st.one_of(
    st.integers(-5, 1200).map(str),
    st.sampled_from(["\u0663", "1e3", "0x10", "+1", "-0", "9" * 30, "1_000", "٣٤"]),
    st.text(max_size=6),
)
lines = st.one_of(
    st.tuples(names, class_ids).map(" ".join),
    st.tuples(names, class_ids, st.sampled_from([" ", "\t", "  ", " x "])).map(
        lambda t: t[0] + t[2] + t[1]),
    st.text(max_size=30),
)
label_files = st.one_of(
    st.lists(lines, max_size=8).map(
        lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),  # lone surrogates: not UTF-8
    st.binary(max_size=64),
)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-dataset")
    (root / "val").mkdir()
    for name in IMAGES:
        Image.new("RGB", (8, 8)).save(root / "val" / name, "JPEG")
    return root


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=label_files, on_mismatch=st.sampled_from(["stop", "skip"]),
       classes=st.sampled_from([(1000, 0), (1001, 1), (10, 0)]))
def test_any_label_file_gives_samples_or_a_one_line_dataset_error(
    image_folder: Path, content: bytes, on_mismatch: str, classes: tuple[int, int]
) -> None:
    (image_folder / "val_label.txt").write_bytes(content)
    cfg = DatasetConfig(name="fuzz", root=str(image_folder), on_mismatch=on_mismatch)
    model = ModelConfig(name="m", arch="torchvision.models.alexnet", num_classes=classes[0],
                        class_offset=classes[1])
    try:
        samples = dataset.list_samples(cfg, model)
    except DatasetError as error:
        message = describe(error)
        assert message and "\n" not in message and "\r" not in message
        return
    assert samples
    assert len({s.name for s in samples}) == len(samples)
    for sample in samples:
        assert sample.name in IMAGES
        assert sample.path == image_folder / "val" / sample.name
        assert 0 <= sample.label < classes[0] - classes[1]


# --- config overrides -----------------------------------------------------------------------

KEYS = ["bs", "seed", "traceback", "model", "chip", "dataset", "stage", "model.preprocess.resize",
        "model.preprocess.crop", "model.preprocess.interpolation", "model.preprocess.mean",
        "model.num_classes", "model.class_offset", "model.weights", "model.weights_checksum",
        "model.arch", "model.arch_kwargs", "chip.threads", "chip.precision", "chip.devices",
        "dataset.limit", "dataset.on_mismatch", "dataset.root", "preprocess.chunk_size",
        "preprocess.workers", "benchmark.min_iters", "benchmark.windows",
        "benchmark.stable_windows", "benchmark.input", "cache.force", "stage.stages",
        "security.extra_arch_prefixes", "mlflow.tracking_uri", "nosuch", "model.nosuch"]
values = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats().map(str),
    st.sampled_from(["", "null", "true", "abc", "[]", "[export,bogus]", "[infer,export]",
                     "[1,2]", "{a: 1}", "{num_classes: ten}", "${oc.env:RUNNER_FUZZ_NOPE}",
                     "${bs}", "${nope}", "'quoted'", "a b", "[", "]", "${", "\\", "md5:",
                     "sha256:xyz", "torch.nn.Identity", "os.system", "alexnet", "cpu",
                     "synthetic", "all", "performance", "[torch nn]", "[all]", "fp8"]),
    st.text(max_size=10),
)
overrides = st.one_of(
    st.tuples(st.sampled_from(["", "+", "~", "++"]), st.sampled_from(KEYS), values).map(
        lambda t: f"{t[0]}{t[1]}={t[2]}"),
    st.text(max_size=15),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(overrides, min_size=1, max_size=3))
def test_any_overrides_give_a_config_or_a_one_line_explained_error(args: list[str]) -> None:
    try:
        cfg = run_config(*args)
        check_order(cfg.stage.stages)
    except Exception as error:  # what the CLI would print for it
        message = describe(error)
        assert message and "\n" not in message
        assert not message.startswith("unexpected"), message
