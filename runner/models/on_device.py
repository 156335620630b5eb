"""On-device preprocessing for ONNX Runtime and PyTorch (`model.preprocess.on_device=true`): the
model takes the cached uint8 crops, (N, H, W, 3) RGB, and normalizes them as its first nodes.

The arithmetic is the float route's own (runner.data.transforms.normalize, torchvision's
ToTensor + Normalize): HWC -> CHW where the model takes NCHW (on the uint8 bytes), cast to
float32, the recipe's channel order, `/ 255` where the recipe divides, `- mean`, `/ std`.
Division, not a multiplication by the reciprocal: x / 255 and x * (1 / 255) differ in the
last bit for some values, and with the same float32 operations in the same order the tensor
reaching the first convolution is bit for bit the one the float route feeds
(tests/test_on_device.py checks it). The transpose before the cast moves a quarter of the bytes
a float32 transpose would: AlexNet's on-device e2e pass went from 0.91x to 1.10x the float
route's (docs/results.md).

Ascend does the same on its AIPP unit instead, configured by runner/backends/aipp.py; there the
ONNX file keeps its float input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from runner.config import Normalization

if TYPE_CHECKING:
    from runner.config import RunConfig

# where the chip normalizes by itself (AIPP), the exported model keeps its float input
AIPP_RUNTIMES = ("ais_bench",)


def in_model(cfg: RunConfig) -> Normalization | None:
    """The normalization the exported model applies as its first nodes: the recipe's, where
    model.preprocess.on_device=true on a runtime without AIPP; None for the float route."""
    recipe = cfg.model.preprocess
    if not recipe.on_device or cfg.chip.runtime in AIPP_RUNTIMES:
        return None
    return recipe.normalization()


def uint8_input_shape(bs: int, size: int) -> tuple[int, int, int, int]:
    """The on-device input: the crops as the preprocess cache keeps them."""
    return (bs, size, size, 3)


class UInt8Input(nn.Module):
    """`model` taking uint8 (N, H, W, 3) RGB crops: the recipe's normalization, then the model.

    A floating-point input holding the same integers (a session that casts its input first)
    gives the same result: the values 0..255 are exact in every float type."""

    def __init__(self, model: nn.Module, normalization: Normalization) -> None:
        super().__init__()
        self.model = model
        self.channels = (torch.tensor([2, 1, 0]) if normalization.channel_order == "BGR"
                         else None)
        self.divide_by_255 = normalization.divide_by_255
        self.nchw = normalization.layout == "NCHW"
        # buffers, so .to(device) moves them; float32 whatever the model's dtype: the arithmetic
        # is the float route's, the result then cast to the model's dtype
        self.register_buffer("mean", torch.tensor(normalization.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(normalization.std, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        channel_axis = -1
        if self.nchw:
            # the transpose first, on the uint8 bytes (a quarter of the float32 ones), and
            # contiguous NCHW as the float route feeds it: PyTorch picks its convolution by the
            # memory layout, and a permuted (channels-last) view sums in another order
            pixels = pixels.permute(0, 3, 1, 2).contiguous()
            channel_axis = 1
        values = pixels.to(torch.float32)
        if self.channels is not None:
            values = values.index_select(channel_axis, self.channels)
        if self.divide_by_255:
            values = values / 255.0
        shape = (3, 1, 1) if self.nchw else (3,)
        values = (values - self.mean.view(shape)) / self.std.view(shape)
        first = next(self.model.parameters(), None)
        if first is not None and first.dtype != torch.float32:
            values = values.to(first.dtype)
        return self.model(values)


def wrap(model: nn.Module, normalization: Normalization | None) -> nn.Module:
    """`model` behind the on-device normalization, or as it is for the float route."""
    return model if normalization is None else UInt8Input(model, normalization).eval()


def probe_batch(bs: int, size: int, seed: int) -> np.ndarray:
    """Random uint8 crops, for checks that run a model on made-up input."""
    return np.random.default_rng(seed).integers(0, 256, size=uint8_input_shape(bs, size),
                                                dtype=np.uint8)
