"""The plan: every check that needs no work runs before the first stage and before an MLflow run
exists; `security.extra_arch_prefixes` reaches every place that imports `model.arch`; the
reference logits are a stage like any other."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner import pipeline
from runner.config import STAGE_NAMES
from runner.errors import ConfigError
from runner.stages import producers, stage_module
from tests.conftest import Workspace, run_config

TINY_PACKAGE = '''
"""A model package the runner does not trust by default."""
from torch import nn


def tiny(num_classes: int = 1000) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))
'''


def test_producers_are_found_from_the_stage_modules() -> None:
    made = producers()
    for name in STAGE_NAMES:
        for artifact in stage_module(name).GIVES:
            assert made[artifact] in STAGE_NAMES
    assert made["reference_logits"] == "reference" and made["logits"] == "infer"
    with pytest.raises(ConfigError, match=r"parity needs 'reference_logits', made by "
                                          r"reference; list reference before parity"):
        pipeline.check_order(["export", "convert", "preprocess", "infer", "parity"])


def test_no_stage_imports_another() -> None:
    stages = Path(pipeline.__file__).parent / "stages"
    for module in stages.glob("*.py"):
        text = module.read_text()
        assert "from runner.stages" not in text and "import runner.stages" not in text, module


def test_the_reference_is_a_stage_of_the_presets(tmp_path: Path) -> None:
    for preset in ("all", "accuracy"):
        stages = run_config(f"stage={preset}").stage.stages
        assert stages.index("reference") < stages.index("parity")
    planned = pipeline.plan(run_config("debug=smoke", "cache.force=[reference]",
                                       f"paths.cache_dir={tmp_path}"))
    forced = {stage.name for stage in planned if stage.force}
    assert forced == {"reference", "benchmark", "e2e"}  # and the measurements, as always


@pytest.mark.parametrize(("overrides", "message"), [
    (("debug=smoke", "chip.precision=fp16"),
     r"chip\.precision=fp16 is not supported by runtime onnxruntime"),
    (("debug=smoke", "chip=ascend310p3", "chip.precision=int8"),
     r"chip\.precision=int8 is ONNX Runtime's static quantization on the CPU \(chip=cpu\), not "
     r"runtime ais_bench .*AMCT"),
    (("debug=smoke", "dataset=imagenet", "dataset.root=null"), r"dataset\.root is not set"),
    (("debug=smoke", "cache-under-a-file"), r"paths\.cache_dir=.* is not writable"),
    (("debug=smoke", "model.weights=http://127.0.0.1:9/alexnet-owt-4df8aa71.pth"),
     r"cannot reach model\.weights=http://127\.0\.0\.1:9/alexnet-owt-4df8aa71\.pth"),
    (("debug=smoke", "model.weights=/nowhere/alexnet.pth"),
     r"checkpoint /nowhere/alexnet\.pth does not exist"),
    (("debug=smoke", "chip=torch_cpu", "model.arch=torch.nn.Identity"),
     r"model\.arch='torch\.nn\.Identity' is outside the allowed packages"),
    # named inside an allowed package but defined elsewhere (torch's Tensor, imported there):
    # refused by the plan, not by the export stage once a run exists (issue 31)
    (("debug=smoke", "model.arch=torchvision.models.resnet.Tensor"),
     r"model\.arch='torchvision\.models\.resnet\.Tensor' is \S+ from torch, not a model "
     r"builder of the allowed packages"),
    (("debug=smoke", "model.arch=torchvision.models.resnet.nosuch"),
     r"model\.arch='torchvision\.models\.resnet\.nosuch' cannot be imported"),
    (("debug=smoke", "model.weights=."),
     r"checkpoint \S+ is a directory, not a checkpoint file: name the checkpoint file in it "
     r"\(e\.g\. model\.weights=\S+/model\.pth\)"),
])
def test_what_needs_no_work_fails_at_once_without_an_mlflow_run(
        tmp_path: Path, overrides: tuple[str, ...], message: str) -> None:
    workspace = Workspace(tmp_path / "fresh")  # its own cache: nothing in it before
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cache = workspace.cache
    if "cache-under-a-file" in overrides:
        workspace.cache = a_file / "cache"
    args = [o for o in overrides if o != "cache-under-a-file"]
    # how fast is a benchmark's question (benchmarks/cli_startup.py), not a timed test's: here,
    # that nothing was done
    result = workspace.run(*args, check=False, env={"IMAGENET_ROOT": ""})
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("runner: error:")]
    assert re.search(message, line), line
    assert not workspace.db.exists()  # no MLflow run, not even a store
    assert not list(cache.glob("*/*"))  # no stage started


@pytest.mark.slow
@pytest.mark.parametrize(("chip", "arch"), [
    ("cpu", "mymodels.tiny"),  # defined in the package's own __init__.py (issue 31)
    ("torch_cpu", "mymodels.models.tiny"),
])
def test_an_architecture_from_an_extra_package_runs_every_stage(
        workspace: Workspace, tmp_path: Path, chip: str, arch: str) -> None:
    package = tmp_path / "site" / "mymodels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(TINY_PACKAGE if arch == "mymodels.tiny" else "")
    (package / "models.py").write_text(TINY_PACKAGE)
    result = workspace.run("debug=smoke", f"chip={chip}", "model=resnet18",
                           f"model.arch={arch}", "security.extra_arch_prefixes=[mymodels]",
                           env={"PYTHONPATH": str(tmp_path / "site")})
    assert "runner: error" not in result.stderr
    (run,) = workspace.runs()
    assert run.info.status == "FINISHED"
    stages = run_config("stage=all").stage.stages
    assert set(stages) <= set(workspace.cache_states(run))
    assert run.data.metrics["parity_top1_agreement"] == 1.0
    assert "throughput_fps" in run.data.metrics


def test_a_builder_in_a_packages_init_is_allowed_and_its_code_keys_the_export(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.models import build
    from runner.models.spec import arch_code

    package = tmp_path / "mymodels"
    package.mkdir()
    (package / "__init__.py").write_text(TINY_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    builder = build.resolve_arch("mymodels.tiny", ("mymodels",))
    assert builder.__module__ == "mymodels"
    # a sibling package whose name merely starts with the prefix is not inside it
    with pytest.raises(ConfigError, match="outside the allowed packages"):
        build.resolve_arch("mymodelsx.tiny", ("mymodels",))
    before = arch_code("mymodels.tiny")
    (package / "__init__.py").write_text(TINY_PACKAGE + "\n# edited\n")
    assert before is not None and arch_code("mymodels.tiny") != before
    with pytest.raises(ConfigError, match=r"module 'nowhere' is not found on the Python path"):
        arch_code("nowhere.tiny")


def test_the_cli_starts_fast_enough_to_fail_fast() -> None:
    # the import behind every command: MLflow and torch are imported only once work starts
    code = "import runner.cli, sys; print('mlflow' in sys.modules, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["False", "False"]
