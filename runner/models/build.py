"""Build the PyTorch model a config names and load its weights."""

from __future__ import annotations

import importlib
import pickle
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runner.config import BUILTIN_ARCH_PREFIXES, check_arch, module_inside
from runner.errors import ConfigError, WeightsError


def resolve_arch(arch: str, allowed: Sequence[str] = BUILTIN_ARCH_PREFIXES,
                 ) -> Callable[..., nn.Module]:
    """The callable `arch` names, refused unless it is public and both named and defined in an
    allowed package (so a re-exported helper such as a downloader cannot be reached)."""
    allowed = tuple(allowed)
    check_arch(arch, allowed)
    module_name, _, attribute = arch.rpartition(".")
    try:
        builder = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        raise ConfigError(f"model.arch={arch!r} cannot be imported: check the name") from None
    defined_in = getattr(builder, "__module__", None) or ""
    if not callable(builder) or not module_inside(defined_in, allowed):
        raise ConfigError(
            f"model.arch={arch!r} is {type(builder).__name__} from {defined_in or '?'}, not a "
            "model builder of the allowed packages"
        )
    return builder


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _refusal_reason(message: str) -> str:
    """The line of torch's multi-line, ANSI-coloured refusal that names the cause."""
    lines = [_ANSI.sub("", line).strip() for line in message.splitlines()]
    lines = [line for line in lines if line]
    named = next((line for line in lines if "Unsupported " in line), None)
    if named is not None:  # "WeightsUnpickler error: Unsupported global: GLOBAL x.Y was not ..."
        return named[named.index("Unsupported "):].split(" was not")[0]
    return (lines or ["unknown reason"])[0][:300]


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        with open(path, "rb") as stream:
            head = stream.read(2)
        # a pickle starts with its PROTO opcode and torch.save writes a zip: anything else (a
        # text file ...) is no checkpoint, rather than a checkpoint holding code
        if head[:1] != b"\x80" and head != b"PK":
            raise WeightsError(
                f"checkpoint {path} cannot be read (UnpicklingError: "
                f"{_refusal_reason(str(error))}): it may be truncated or not a PyTorch "
                "checkpoint; fetch it again"
            ) from None
        raise WeightsError(
            f"checkpoint {path} was refused by the safe loader (weights_only=True): "
            f"{_refusal_reason(str(error))}; only plain tensors are loaded, never code: save the "
            "model's state_dict() instead of the whole model"
        ) from None
    except Exception as error:
        # a file that is no checkpoint fails in many ways (a text file: KeyError or IndexError
        # from the unpickler), each of them meaning the same to the user
        first_line = f"{type(error).__name__}: {_refusal_reason(str(error))}"
        raise WeightsError(
            f"checkpoint {path} cannot be read ({first_line}): it may be truncated or not a "
            "PyTorch checkpoint; fetch it again"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"checkpoint {path} is not a state dict of tensors ({len(not_tensors)} other "
            f"entries, e.g. {', '.join(not_tensors[:3])})"
        )
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")


def _check_fit(model: nn.Module, state: dict[str, torch.Tensor], arch: str,
               arch_kwargs: dict[str, Any], weights: Path) -> None:
    """Refuse a checkpoint whose names or shapes differ from the architecture, listing them."""
    expected = model.state_dict()
    # BatchNorm fills in a missing num_batches_tracked itself (checkpoints before PyTorch 0.4.1,
    # such as the 2017 InceptionV4 file, have none)
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise WeightsError(
            f"checkpoint {weights} does not fit {arch}: "
            f"{len(missing)} missing keys ({_show(missing)}), "
            f"{len(unexpected)} unexpected keys ({_show(unexpected)})"
        )
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        raise WeightsError(
            f"checkpoint {weights} does not fit {arch}"
            f"{f' with {arch_kwargs}' if arch_kwargs else ''}: "
            f"{len(wrong)} tensors of another shape (checkpoint vs model: {_show(wrong)}); "
            "check model.arch_kwargs (e.g. num_classes)"
        )


def build(arch: str, arch_kwargs: dict[str, Any], weights: Path | None, seed: int,
          allowed: Sequence[str] = BUILTIN_ARCH_PREFIXES) -> nn.Module:
    """The model in eval mode: weights from `weights`, or a seeded random init when None."""
    builder = resolve_arch(arch, allowed)
    torch.manual_seed(seed)
    try:
        model: Any = builder(**arch_kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"model.arch={arch} refused model.arch_kwargs={arch_kwargs} "
            f"({type(error).__name__}: {error})"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.arch={arch} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    if weights is not None:
        state = load_state_dict(weights)
        _check_fit(model, state, arch, arch_kwargs, weights)
        model.load_state_dict(state)
    return model.eval()


class NhwcInput(nn.Module):
    """A model taking channels-last input, (N, H, W, C), whose layers take (N, C, H, W): one
    transpose before them, exported as the graph's first operator, so the ONNX (and OM) input
    is NHWC as `model.preprocess.layout=NHWC` feeds it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.permute(0, 3, 1, 2))


def for_input_layout(model: nn.Module, layout: str) -> nn.Module:
    """`model` taking input in `layout` (NCHW: as built; NHWC: behind a transpose)."""
    return model if layout == "NCHW" else NhwcInput(model).eval()
