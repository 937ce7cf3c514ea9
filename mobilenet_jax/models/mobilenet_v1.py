"""MobileNet V1 (Howard et al., 2017, arXiv 1704.04861), Keras-compatible.

Table 1 of the paper as (pointwise channels c, stride s) per depthwise
separable block, after a 3x3 stride-2 stem conv with 32 channels.
"""

from typing import List, Sequence, Tuple

import flax.linen as nn

from mobilenet_jax.errors import ConfigError
from mobilenet_jax.models.base import (STAGE, TAP, Endpoint, MobileNet,
                                       check_image_size, stride_plan, training_knob)
from mobilenet_jax.models.layers import ConvBN, FullConvBlock, SeparableBlock, value

STEM_CHANNELS = 32
# (c, s): output channels and stride of each depthwise separable block.
BLOCKS: Tuple[Tuple[int, int], ...] = (
    (64, 1),
    (128, 2), (128, 1),
    (256, 2), (256, 1),
    (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)
# Blocks 7..11 (1-based): the five 14x14x512 layers Table 5's shallow net drops.
SHALLOW_REMOVED = (7, 8, 9, 10, 11)
CONV_TYPES = ("separable", "full")


def width(channels: int, alpha: float, min_depth: int = 1) -> int:
  """The width multiplier rule of Keras Applications, int(c * alpha), never
  below min_depth (TF-slim's floor; 1, no floor, by default as in Keras)."""
  return max(int(channels * alpha), min_depth)


def conv_padding(strides: int, convention: str):
  """Keras pads (0, 1) before a 'valid' stride-2 conv; otherwise TF "SAME".

  For even sizes the two agree; for odd sizes Keras' output is one pixel
  smaller than "SAME" would give. TF-slim ("same") uses "SAME" throughout.
  """
  return ((0, 1), (0, 1)) if strides == 2 and convention == "keras" else "SAME"


def block_plan(blocks, shallow: bool):
  """The (block_id, c, s) list the network runs, ids 1-based as in Keras."""
  return [(i, c, s) for i, (c, s) in enumerate(blocks, start=1)
          if not (shallow and i in SHALLOW_REMOVED)]


def layer_strides(blocks, shallow: bool, output_stride: int):
  """(stride, dilation) of the stem and of each block, after output_stride."""
  strides = [2] + [s for _, _, s in block_plan(blocks, shallow)]
  return stride_plan(strides, output_stride)


class MobileNetV1(MobileNet):
  """MobileNet V1 with the paper's knobs (and those of `MobileNet`).

  Attributes:
    alpha: width multiplier; channels are int(c * alpha) (Keras).
    min_depth: no layer narrower than this (TF-slim's floor; 1: none, Keras).
    dropout: dropout rate before the classifier (Keras default 1e-3).
    depth_multiplier: channel multiplier of every depthwise conv.
    conv_type: "separable" (the paper) or "full" (Table 4's Conv MobileNet).
    shallow: drop the five 14x14x512 blocks (Table 5's Shallow MobileNet).
    blocks: the (c, s) table; replace it from config to change the network.
  Endpoints (TF-slim's names): Conv2d_0 (the stem), then per block i
  Conv2d_i_depthwise and Conv2d_i_pointwise (Conv2d_i for full convs).
  """
  dropout: float = training_knob(1e-3)
  min_depth: int = 1
  depth_multiplier: int = 1
  conv_type: str = "separable"
  shallow: bool = False
  blocks: Sequence[Tuple[int, int]] = BLOCKS

  def __post_init__(self):
    if self.conv_type not in CONV_TYPES:
      raise ConfigError(f"model.conv_type={self.conv_type!r} is not valid; "
                        f"choose one of {CONV_TYPES}.")
    if int(self.depth_multiplier) != self.depth_multiplier or self.depth_multiplier < 1:
      raise ConfigError(f"model.depth_multiplier={self.depth_multiplier!r} is "
                        "not valid; use an integer >= 1.")
    super().__post_init__()

  def endpoint_plan(self) -> List[Endpoint]:
    plan = [Endpoint("Conv2d_0", "stem", 2, STAGE)]
    reduction = 2
    for i, _, s in block_plan(self.blocks, self.shallow):
      reduction *= s
      if self.conv_type == "full":
        plan.append(Endpoint(f"Conv2d_{i}", f"block_{i}/conv", reduction, STAGE))
      else:
        plan += [Endpoint(f"Conv2d_{i}_depthwise", f"block_{i}/depthwise", reduction, TAP),
                 Endpoint(f"Conv2d_{i}_pointwise", f"block_{i}/pointwise", reduction, STAGE)]
    return plan

  @nn.compact
  def __call__(self, x, train: bool = False, endpoints: bool = False):
    """Logits (or what include_top, pooling and num_classes say), or with
    endpoints=True a dict of every endpoint's feature map (no head)."""
    check_image_size(min(x.shape[1:3]), "MobileNetV1")
    settings = self.layer_settings()
    (stem_stride, _), *strides = layer_strides(self.blocks, self.shallow,
                                               self.output_stride)
    x = self.quantize(x.astype(self.dtype), train, "input_quant")
    x = ConvBN(width(STEM_CHANNELS, self.alpha, self.min_depth), 3, stem_stride,
               conv_padding(stem_stride, self.padding), settings=settings,
               name="stem")(x, train, defer=True)
    ends = {"Conv2d_0": value(x)}
    for (i, c, _), (s, rate) in zip(block_plan(self.blocks, self.shallow), strides):
      c, padding = width(c, self.alpha, self.min_depth), conv_padding(s, self.padding)
      if self.conv_type == "full":
        x = FullConvBlock(c, s, padding, rate, settings=settings, name=f"block_{i}")(x, train)
        ends[f"Conv2d_{i}"] = x
      else:
        x, depthwise = SeparableBlock(c, s, self.depth_multiplier, padding, rate,
                                      settings=settings, name=f"block_{i}")(x, train)
        ends.update({f"Conv2d_{i}_depthwise": depthwise, f"Conv2d_{i}_pointwise": value(x)})
    if endpoints:
      return ends
    return self.classifier_head(value(x), train)
