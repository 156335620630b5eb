"""The composed config: groups, defaults, the typed schema and its error messages."""

from __future__ import annotations

import subprocess

import pytest
from hydra.errors import ConfigCompositionException

from runner.config import PROJECT_ROOT
from runner.errors import ConfigError
from runner.pipeline import check_order
from tests.conftest import compose_config, run_config
from tests.warm_cli import run_cli


def test_defaults_compose_into_a_valid_run() -> None:
    cfg = run_config()
    assert (cfg.model.name, cfg.dataset.name, cfg.chip.name, cfg.stage.name) == (
        "alexnet", "imagenet", "cpu", "all")
    assert cfg.bs == 16
    assert cfg.stage.stages == ["export", "convert", "preprocess", "infer", "reference", "parity",
                                "evaluate", "benchmark", "e2e"]
    assert cfg.mlflow.tracking_uri == f"sqlite:///{PROJECT_ROOT}/mlflow.db"
    assert cfg.mlflow.artifact_location == f"{PROJECT_ROOT}/mlruns"


def test_groups_select_and_bs_overrides() -> None:
    cfg = run_config("bs=4", "stage=performance", "dataset=synthetic")
    assert cfg.bs == 4
    assert cfg.stage.stages == ["export", "convert", "benchmark"]
    assert cfg.dataset.synthetic is not None
    assert cfg.dataset.root.endswith("synthetic-n64-seed0")


@pytest.mark.parametrize("bs", ["0", "-3"])
def test_non_positive_bs_is_rejected_naming_the_key(bs: str) -> None:
    with pytest.raises(ConfigError, match=r"^bs=-?\d+ must be a positive integer"):
        run_config(f"bs={bs}")


def test_non_integer_bs_is_rejected_while_composing() -> None:
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("bs=abc")
    assert "bs" in str(error.value.__cause__)


def test_misspelt_key_is_rejected() -> None:
    with pytest.raises(ConfigCompositionException, match="wieghts"):
        compose_config("model.wieghts=random")


def test_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"chip.precision='fp8'"):
        run_config("chip.precision=fp8")
    with pytest.raises(ConfigError, match=r"stage.stages='bogus'"):
        run_config("stage.stages=[export,bogus]")


def test_unknown_group_option_is_rejected() -> None:
    with pytest.raises(ConfigCompositionException, match="nosuchmodel"):
        compose_config("model=nosuchmodel")


def test_stage_order_is_checked() -> None:
    with pytest.raises(ConfigError, match="infer needs 'model', made by convert"):
        check_order(["export", "preprocess", "infer"])
    check_order(["export", "convert", "benchmark"])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), timeout=120)


def test_cli_help_lists_the_groups() -> None:
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    for line in ("model: alexnet, efficientnet_b0, inceptionv4, mobilenet_v3_large, resnet18, "
                 "resnet50",
                 "stage: accuracy, all, performance, score",
                 "chip: ascend310, ascend310p3, ascend910b, cpu, cuda, cuda_ort, tensorrt_ort, "
                 "torch_cpu"):
        assert line in result.stdout


def test_cli_cfg_job_prints_the_composed_config() -> None:
    result = _cli("--cfg", "job", "bs=4", "model.weights=random")
    assert result.returncode == 0, result.stderr
    assert "bs: 4" in result.stdout
    assert "weights: random" in result.stdout


def test_cli_bad_bs_exits_non_zero_with_the_key_named() -> None:
    result = _cli("bs=0", "stage=performance", "model.weights=random")
    assert result.returncode != 0
    assert "bs=0 must be a positive integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_product_names_no_folder_of_the_workplace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 31: users have no `../shared`; the sample preset reads RUNNER_SAMPLE_DIR instead."""
    named = [str(path.relative_to(PROJECT_ROOT))
             for folder in ("conf", "runner") for path in (PROJECT_ROOT / folder).rglob("*")
             if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".txt", ".cfg")
             and "../shared" in path.read_text(errors="replace")]
    assert named == []
    monkeypatch.setenv("RUNNER_SAMPLE_DIR", "/data/sample")
    assert run_config("dataset=imagenet_sample").dataset.root == "/data/sample"
    monkeypatch.delenv("RUNNER_SAMPLE_DIR")
    assert run_config("dataset=imagenet_sample").dataset.root is None
