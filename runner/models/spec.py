"""The PyTorch model a run names, as one value: what `export`, `reference` and the torch backend
build, each from the same spec, so a setting such as `security.extra_arch_prefixes` reaches every
place that imports `model.arch`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import environment
from runner.cache import source_digest
from runner.config import RunConfig, allowed_arch_prefixes, check_arch
from runner.errors import ConfigError
from runner.models import weights
from runner.settings import runtime_only

if TYPE_CHECKING:
    from torch import nn


def arch_code(arch: str) -> str | None:
    """Digest of the module `arch` is named in, read from its file (torchvision's code is pinned
    by its version): a user's package (security.extra_arch_prefixes) edited changes the export
    key as this package's own models do. Only that file: what it imports is not followed."""
    if arch.startswith("torchvision."):
        return None
    try:
        return source_digest(arch.rpartition(".")[0])
    except (ImportError, ValueError):
        raise ConfigError(
            f"model.arch={arch!r}: module {arch.rpartition('.')[0]!r} is not found on the "
            "Python path: check the name, or run from the folder holding the package"
        ) from None


@dataclass(frozen=True)
class ModelSpec:
    arch: str  # import path of a callable returning an nn.Module
    arch_kwargs: dict[str, Any]
    weights: weights.WeightsSource
    weights_identity: str  # the checksum, a local file's hash, or random(seed=...)
    seed: int  # seeds a random init
    arch_code: str | None
    torch: str  # torch's version: the same weights can export differently across releases
    input_layout: str  # NCHW | NHWC (model.preprocess.layout): NHWC adds a leading transpose
    # packages model.arch may import from (the built-in ones + security.extra_arch_prefixes)
    allowed_prefixes: tuple[str, ...] = runtime_only()
    weights_dir: str = runtime_only()  # where a downloaded checkpoint is kept

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ModelSpec:
        model = cfg.model
        prefixes = allowed_arch_prefixes(cfg.security.extra_arch_prefixes)
        check_arch(model.arch, prefixes)
        src = weights.source(model)
        return cls(arch=model.arch, arch_kwargs=dict(model.arch_kwargs), weights=src,
                   weights_identity=weights.identity(src, cfg.seed), seed=cfg.seed,
                   arch_code=arch_code(model.arch), torch=environment.module_version("torch"),
                   input_layout=model.preprocess.layout,
                   allowed_prefixes=prefixes, weights_dir=str(cfg.cache_dir / "weights"))

    def check(self) -> None:
        """What can fail before any work: the builder cannot be imported or is not one of the
        allowed packages' (the whole allow-list check), the checkpoint is missing or cannot be
        downloaded."""
        from runner.models import build

        build.resolve_arch(self.arch, self.allowed_prefixes)
        weights.check_available(self.weights, Path(self.weights_dir))

    def build(self) -> nn.Module:
        """The model in eval mode taking `input_layout`, its checkpoint fetched (and verified)
        first."""
        from runner.models import build

        checkpoint = weights.fetch(self.weights, Path(self.weights_dir))
        net = build.build(self.arch, self.arch_kwargs, checkpoint, self.seed,
                          self.allowed_prefixes)
        return build.for_input_layout(net, self.input_layout)
