"""Build the PyTorch model a config names and load its weights."""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from runner.config import ModelConfig
from runner.errors import ConfigError, WeightsError

# `model.arch` is imported and called; only code from these packages may be named there
ALLOWED_ARCH_PREFIXES = ("torchvision.models.", "runner.models.")


def resolve_arch(arch: str) -> Callable[..., nn.Module]:
    if not arch.startswith(ALLOWED_ARCH_PREFIXES):
        raise ConfigError(
            f"model.arch={arch!r} is outside the allowed packages "
            f"({', '.join(ALLOWED_ARCH_PREFIXES)})"
        )
    module_name, _, attribute = arch.rpartition(".")
    try:
        builder = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        raise ConfigError(f"model.arch={arch!r} cannot be imported: check the name") from None
    return builder


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0]
        raise WeightsError(
            f"checkpoint {path} was refused by the safe loader (weights_only=True): {first_line}; "
            "only plain tensors are loaded, never code"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise WeightsError(
            f"checkpoint {path} cannot be read ({error}): it may be truncated"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def build(cfg: ModelConfig, weights: Path | None, seed: int) -> nn.Module:
    """The model in eval mode: weights from `weights`, or a seeded random init when None."""
    builder = resolve_arch(cfg.arch)
    torch.manual_seed(seed)
    model = builder(**cfg.arch_kwargs)
    if weights is not None:
        state = load_state_dict(weights)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            def show(keys: list[str]) -> str:
                return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")

            raise WeightsError(
                f"checkpoint {weights} does not fit {cfg.arch}: "
                f"{len(result.missing_keys)} missing keys ({show(result.missing_keys)}), "
                f"{len(result.unexpected_keys)} unexpected keys ({show(result.unexpected_keys)})"
            )
    return model.eval()
