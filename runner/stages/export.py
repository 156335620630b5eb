"""export: PyTorch checkpoint -> ONNX (the guide's opset, I/O names and dynamic batch axis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch

from runner.cache import StageOutput, digest_file, source_digest
from runner.config import RunConfig
from runner.models import build, weights

NEEDS: tuple[str, ...] = ()
GIVES = ("onnx",)
CODE = ("runner.models.build",)
ONNX_FILE = "model.onnx"


def arch_code(arch: str) -> str | None:
    """Digest of the module defining `arch` when it is this package's; torchvision's is pinned."""
    if not arch.startswith("runner."):
        return None
    return source_digest(build.resolve_arch(arch).__module__)


def key_config(cfg: RunConfig) -> dict[str, Any]:
    model = cfg.model
    src = weights.source(model)
    return {
        "arch": model.arch,
        "arch_kwargs": model.arch_kwargs,
        "weights": weights.identity(src, cfg.seed),
        "input": [model.input_name, 3, model.input_size, model.input_size],
        "output": model.output_name,
        "opset": model.opset,
        "torch": torch.__version__,
        # an architecture of this package is code the export depends on (torchvision's is pinned)
        "arch_code": arch_code(model.arch),
    }


def export_onnx(net: torch.nn.Module, cfg: RunConfig, target: Path) -> None:
    model = cfg.model
    dummy = torch.randn(1, 3, model.input_size, model.input_size)
    # the TorchScript exporter: the dynamo one needs opset >= 18, the guides need 11
    torch.onnx.export(
        net,
        (dummy,),
        str(target),
        input_names=[model.input_name],
        output_names=[model.output_name],
        dynamic_axes={model.input_name: {0: "-1"}, model.output_name: {0: "-1"}},
        opset_version=model.opset,
        do_constant_folding=True,
        dynamo=False,
    )
    onnx.checker.check_model(str(target))


def run(cfg: RunConfig, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    src = weights.source(cfg.model)
    checkpoint = weights.fetch(src, cfg.cache_dir)
    net = build.build(cfg.model, checkpoint, cfg.seed, cfg.security.extra_arch_prefixes)
    target = out_dir / ONNX_FILE
    with torch.no_grad():
        export_onnx(net, cfg, target)
    return StageOutput(
        artifacts={"onnx": ONNX_FILE},
        info={"weights": weights.identity(src, cfg.seed), "checkpoint": str(checkpoint),
              "opset": cfg.model.opset},
        digests={"onnx": f"sha256:{digest_file(target)}"},
    )
