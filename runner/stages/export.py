"""export: PyTorch checkpoint -> ONNX (the guide's opset, I/O names and dynamic batch axis).

With model.preprocess.on_device=true on ONNX Runtime or PyTorch the ONNX input is uint8
(N, H, W, 3) and the recipe's normalization its first nodes (runner.models.on_device); on
Ascend the file keeps its float input and AIPP normalizes (runner.backends.aipp)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.cache import StageOutput, atomic_output_path, digest_file
from runner.config import Normalization, RunConfig, input_shape
from runner.models import on_device
from runner.models.spec import ModelSpec

if TYPE_CHECKING:
    from torch import nn

NEEDS: tuple[str, ...] = ()
GIVES = ("onnx",)
CODE = ("runner.models.build", "runner.models.spec", "runner.models.on_device")
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class OnnxSpec:
    """The ONNX interface the guide names."""

    input_name: str
    output_name: str
    input_size: int  # H = W of the input
    opset: int
    layout: str  # of the normalized input: NCHW | NHWC
    # the normalization the model applies to a uint8 (N, H, W, 3) input as its first nodes
    # (model.preprocess.on_device=true, runner.models.on_device); None: a float input
    in_model: Normalization | None = None


@dataclass(frozen=True)
class Settings:
    model: ModelSpec
    onnx: OnnxSpec

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Settings:
        return cls(ModelSpec.from_config(cfg), onnx_spec(cfg))


def onnx_spec(cfg: RunConfig) -> OnnxSpec:
    m = cfg.model
    return OnnxSpec(m.input_name, m.output_name, m.input_size, m.opset, m.preprocess.layout,
                    on_device.in_model(cfg))


def check(settings: Settings) -> None:
    settings.model.check()


def export_onnx(net: nn.Module, spec: OnnxSpec, target: Path) -> None:
    import onnx
    import torch

    if spec.in_model is not None:
        net = on_device.wrap(net, spec.in_model)
        dummy = torch.from_numpy(on_device.probe_batch(1, spec.input_size, seed=0))
    else:
        dummy = torch.randn(*input_shape(1, spec.input_size, spec.layout))
    with atomic_output_path(target) as writing, torch.no_grad():
        # the TorchScript exporter: the dynamo one needs opset >= 18, the guides need 11
        torch.onnx.export(
            net,
            (dummy,),
            str(writing),
            input_names=[spec.input_name],
            output_names=[spec.output_name],
            dynamic_axes={spec.input_name: {0: "-1"}, spec.output_name: {0: "-1"}},
            opset_version=spec.opset,
            do_constant_folding=True,
            dynamo=False,
        )
        onnx.checker.check_model(str(writing))


def run(settings: Settings, inputs: dict[str, Path], out_dir: Path) -> StageOutput:
    net = settings.model.build()
    target = out_dir / ONNX_FILE
    export_onnx(net, settings.onnx, target)
    return StageOutput(
        artifacts={"onnx": ONNX_FILE},
        info={"weights": settings.model.weights_identity, "opset": settings.onnx.opset,
              "input": "uint8 (N, H, W, 3), normalized in the model"
              if settings.onnx.in_model is not None else "float32"},
        digests={"onnx": f"sha256:{digest_file(target)}"},
    )
