"""AIPP, the Ascend chips' AI Pre-Processing unit: model.preprocess.on_device=true on Ascend.

The convert stage writes the recipe's normalization as a static AIPP configuration, `aipp.cfg`,
and passes it to `atc --insert_op_conf`: the OM model then takes the uint8 RGB crops (the
preprocess cache's own bytes, (N, H, W, 3)) and the chip subtracts and scales them in fp16 before
the first layer. What it follows (CANN 8.0.0 ATC manual, "AIPP Configuration"):

- "Configuration File Template"
  (https://www.hiascend.com/document/detail/en/canncommercial/800/devaids/atc/atlasatc_16_0025.html):
  prototxt `aipp_op { key: value ... }`; in static mode only `input_format` is required, every
  other field has its default; the unit works in the order channel swap (`rbuv_swap_switch`) ->
  crop -> CSC -> mean subtraction/normalization -> padding; for an ONNX model the data format
  can only be NCHW.
- "Normalization Configuration" (atlasatc_16_0022.html): uint8 to fp16 as
  pixel_out_chx(i) = [pixel_in_chx(i) - mean_chn_i - min_chn_i] * var_reci_chn_i.
- "RGB888_U8 to RGB (or BGR)" (atlasatc_16_0029.html): an RGB888_U8 input with `csc_switch:
  false`; "If the original model requires the BGR format, set rbuv_swap_switch to true", and the
  normalization parameters apply to the channels after the swap.
- "Cropping and Padding Configuration" (atlasatc_16_0023.html): the image AIPP outputs must be
  the size --input_shape gives the model; without crop or padding, src_image_size is that size.
- The fields' ranges, as the dynamic-AIPP API documents the same values
  (https://www.hiascend.com/document/detail/en/canncommercial/800/apiref/appdevgapi/aclcppdevg_03_1423.html
  and aclcppdevg_03_1424.html, aclmdlSetAIPPDtcPixelMin / aclmdlSetAIPPPixelVarReci; mean:
  aclmdlSetAIPPDtcPixelMean): mean_chn an integer in [0, 255], min_chn in [0, 255],
  var_reci_chn in [-65504, 65504] (the fp16 range).
- A real example, Ascend/ModelZoo-PyTorch ACL_PyTorch/built-in/cv/InceptionV3_for_Pytorch/
  inceptionv3_aipp.cfg at commit 5a22e9bdc89d540a3337653aa358ee4b966d6995: RGB888_U8,
  src_image_size 299, `crop: false`, min_chn = 255 * torchvision's mean (123.675, 116.28,
  103.53), var_reci_chn = 1 / (255 * std) (0.0171247538316637, ...), mean_chn left at 0;
  tests/test_aipp.py checks the generated file against its fields and values.

The recipe (v / 255 - mean) / std is (v - 255 * mean) * (1 / (255 * std)): min_chn = 255 * mean,
var_reci_chn = 1 / (255 * std), mean_chn = 0, as in that example (without divide_by_255: min_chn
= mean, var_reci_chn = 1 / std). The chip computes it in fp16: var_reci_chn is stored as fp16
(0.0171247... becomes 0.0171204), so the AIPP route's logits differ from the float route's by
more than fp16 rounding of the input alone (the stand-in runtime computes it so).
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.config import Normalization
from runner.errors import ConfigError

CONFIG_FILE = "aipp.cfg"
INPUT_FORMAT = "RGB888_U8"  # the cache's crops: packed uint8 R, G, B per pixel
MIN_CHN_RANGE = (0.0, 255.0)
MEAN_CHN_RANGE = (0, 255)
VAR_RECI_LIMIT = 65504.0  # the largest fp16
# the largest image side taken here: DVPP's non-8K images go up to 4096 (AscendCL API reference,
# "Terminology", aclcppdevg_03_0321.html); the AIPP template states no bound of its own
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class AippConfig:
    """One static `aipp_op`: RGB888_U8 in, the recipe's normalization out, no crop or CSC."""

    src_image_size_w: int
    src_image_size_h: int
    rbuv_swap_switch: bool  # true: the model takes BGR (R and B swapped before normalizing)
    mean_chn: tuple[int, int, int]
    min_chn: tuple[float, float, float]
    var_reci_chn: tuple[float, float, float]

    def fields(self) -> dict[str, object]:
        """The aipp_op fields in the order the file lists them."""
        values: dict[str, object] = {
            "aipp_mode": "static",
            "input_format": INPUT_FORMAT,
            "src_image_size_w": self.src_image_size_w,
            "src_image_size_h": self.src_image_size_h,
            "crop": False,
            "csc_switch": False,  # RGB in, RGB (or swapped BGR) out: no colour-space change
            "rbuv_swap_switch": self.rbuv_swap_switch,
        }
        for index in range(3):
            values[f"mean_chn_{index}"] = self.mean_chn[index]
        for index in range(3):
            values[f"min_chn_{index}"] = self.min_chn[index]
        for index in range(3):
            values[f"var_reci_chn_{index}"] = self.var_reci_chn[index]
        return values

    def render(self) -> str:
        """The file atc reads: prototxt, `key : value` lines inside `aipp_op { }`."""
        lines = ["# written by the runner from model.preprocess (model.preprocess.on_device=true)",
                 "# pixel_out_chx(i) = [pixel_in_chx(i) - mean_chn_i - min_chn_i] * var_reci_chn_i",
                 "aipp_op {"]
        for key, value in self.fields().items():
            shown = str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(
                value, float) else str(value)
            lines.append(f"    {key} : {shown}")
        lines.append("}")
        return "\n".join(lines) + "\n"


def from_recipe(normalization: Normalization, crop: int) -> AippConfig:
    """The AIPP configuration computing `normalization` on `crop` x `crop` RGB crops; a
    recipe AIPP cannot express is refused naming the key (ConfigError, before any work)."""
    if normalization.layout != "NCHW":
        raise ConfigError(
            f"model.preprocess.layout={normalization.layout} with model.preprocess.on_device="
            "true on Ascend: AIPP feeds an ONNX model NCHW only; set layout=NCHW or "
            "on_device=false"
        )
    if not 1 <= crop <= MAX_IMAGE_SIZE:
        raise ConfigError(f"model.preprocess.crop={crop}: AIPP takes images of 1..{MAX_IMAGE_SIZE}"
                          " pixels a side (src_image_size_w/h); set on_device=false")
    scale = 255.0 if normalization.divide_by_255 else 1.0
    min_chn = tuple(scale * m for m in normalization.mean)
    var_reci = tuple(1.0 / (scale * s) for s in normalization.std)
    low, high = MIN_CHN_RANGE
    for index, value in enumerate(min_chn):
        if not low <= value <= high:
            unit = "255 x mean" if normalization.divide_by_255 else "mean"
            raise ConfigError(
                f"model.preprocess.mean={list(normalization.mean)}: AIPP subtracts min_chn_"
                f"{index} = {unit} = {value:g}, outside its range [0, 255]; AIPP cannot express "
                "this recipe: set model.preprocess.on_device=false"
            )
    for index, value in enumerate(var_reci):
        if not -VAR_RECI_LIMIT <= value <= VAR_RECI_LIMIT:
            raise ConfigError(
                f"model.preprocess.std={list(normalization.std)}: AIPP multiplies by "
                f"var_reci_chn_{index} = {value:g}, outside its range [-65504, 65504]; AIPP "
                "cannot express this recipe: set model.preprocess.on_device=false"
            )
    return AippConfig(crop, crop, normalization.channel_order == "BGR", (0, 0, 0),
                      (min_chn[0], min_chn[1], min_chn[2]),
                      (var_reci[0], var_reci[1], var_reci[2]))


def parse(text: str) -> dict[str, str]:
    """The fields of a single-`aipp_op` file, as text (for tests and the run's record)."""
    body = text.split("{", 1)[1].rsplit("}", 1)[0] if "{" in text else ""
    fields: dict[str, str] = {}
    for line in body.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields
