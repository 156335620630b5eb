"""Every runtime module is a `Backend`: the protocol the stages call is the one they provide."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from runner.backends import RUNTIME_MODULES, Backend, SessionSettings, backend_for
from runner.config import RUNTIMES
from tests.conftest import run_config

CHIPS = {"onnxruntime": "cpu", "torch": "torch_cpu", "ais_bench": "ascend310p3"}


def test_every_runtime_has_a_module() -> None:
    assert set(RUNTIME_MODULES) == set(RUNTIMES) == set(CHIPS)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_backend_module_is_a_backend(runtime: str) -> None:
    backend = backend_for(runtime)
    assert isinstance(backend, Backend)
    for name in ("convert_settings", "check", "convert", "open_session"):
        expected = list(inspect.signature(getattr(Backend, name)).parameters)[1:]  # no self
        assert list(inspect.signature(getattr(backend, name)).parameters) == expected, name


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_convert_settings_are_frozen_values(runtime: str) -> None:
    cfg = run_config(f"chip={CHIPS[runtime]}", "model.weights=random")
    settings = backend_for(runtime).convert_settings(cfg)
    assert dataclasses.is_dataclass(settings)
    assert settings == backend_for(runtime).convert_settings(cfg)  # a value: computed alike
    field = dataclasses.fields(settings)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, field, None)
    backend_for(runtime).check(SessionSettings.from_config(cfg), tuple(cfg.chip.devices))
