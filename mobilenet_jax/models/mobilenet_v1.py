"""MobileNet V1 (Howard et al., 2017, arXiv 1704.04861), Keras-compatible.

Table 1 of the paper as (pointwise channels c, stride s) per depthwise
separable block, after a 3x3 stride-2 stem conv with 32 channels.
"""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from mobilenet_jax.errors import ConfigError
from mobilenet_jax.models.common import (check_image_size, classifier_head,
                                         validate_common)
from mobilenet_jax.models.layers import ConvBN, SeparableBlock, bn_settings

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


def width(channels: int, alpha: float) -> int:
  """The width multiplier rule of Keras Applications: int(c * alpha)."""
  return int(channels * alpha)


def stride2_padding(strides: int):
  """Keras pads (0, 1) before a 'valid' stride-2 conv; stride 1 is 'SAME'.

  For even sizes this equals TF "SAME"; for odd sizes Keras' output is one
  pixel smaller than "SAME" would give, and we follow Keras.
  """
  return ((0, 1), (0, 1)) if strides == 2 else "SAME"


def block_plan(blocks, shallow: bool):
  """The (block_id, c, s) list the network runs, ids 1-based as in Keras."""
  return [(i, c, s) for i, (c, s) in enumerate(blocks, start=1)
          if not (shallow and i in SHALLOW_REMOVED)]


class MobileNetV1(nn.Module):
  """MobileNet V1 with the paper's knobs.

  Attributes:
    num_classes: classifier outputs.
    alpha: width multiplier, > 0; channels are int(c * alpha) (Keras).
    depth_multiplier: channel multiplier of every depthwise conv.
    dropout: dropout rate before the classifier (Keras default 1e-3).
    include_top: False returns the last feature map (as Keras does).
    conv_type: "separable" (the paper) or "full" (Table 4's Conv MobileNet).
    shallow: drop the five 14x14x512 blocks (Table 5's Shallow MobileNet).
    blocks: the (c, s) table; replace it from config to change the network.
    bn_momentum, bn_epsilon: batch norm running-average decay and epsilon.
    bn_axis_name: mesh axis to average batch statistics over (sync BN).
    dtype: computation dtype (parameters stay float32).
  The resolution multiplier rho is the input size / 224.
  """
  num_classes: int = 1000
  alpha: float = 1.0
  depth_multiplier: int = 1
  dropout: float = 1e-3
  include_top: bool = True
  conv_type: str = "separable"
  shallow: bool = False
  blocks: Sequence[Tuple[int, int]] = BLOCKS
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = None  # set by the trainer for synchronised BN
  depthwise_impl: str = "auto"  # "auto" | "lax" | "shift" (models/depthwise.py)
  pointwise_impl: str = "dot"   # "dot" | "conv" (layers.Pointwise)
  dtype: Any = jnp.float32

  def __post_init__(self):
    validate_common(self)
    if self.conv_type not in CONV_TYPES:
      raise ConfigError(f"model.conv_type={self.conv_type!r} is not valid; "
                        f"choose one of {CONV_TYPES}.")
    if int(self.depth_multiplier) != self.depth_multiplier or self.depth_multiplier < 1:
      raise ConfigError(f"model.depth_multiplier={self.depth_multiplier!r} is "
                        "not valid; use an integer >= 1.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_image_size(min(x.shape[1:3]), "MobileNetV1")
    bn = bn_settings(self)
    x = x.astype(self.dtype)
    x = ConvBN(width(STEM_CHANNELS, self.alpha), 3, 2, stride2_padding(2),
               **bn, name="stem")(x, train)
    for i, c, s in block_plan(self.blocks, self.shallow):
      x = SeparableBlock(width(c, self.alpha), s, self.depth_multiplier,
                         full=self.conv_type == "full",
                         padding=stride2_padding(s), **bn,
                         name=f"block_{i}")(x, train)
    return classifier_head(self, x, train)
