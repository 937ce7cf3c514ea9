"""MobileNet V1 (Howard et al., 2017, arXiv 1704.04861), Keras-compatible.

Table 1 of the paper as (pointwise channels c, stride s) per depthwise
separable block, after a 3x3 stride-2 stem conv with 32 channels.
"""

from typing import Sequence, Tuple

import flax.linen as nn

from mobilenet_jax.errors import ConfigError
from mobilenet_jax.models.base import MobileNet, check_image_size, training_knob
from mobilenet_jax.models.layers import ConvBN, FullConvBlock, SeparableBlock

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


class MobileNetV1(MobileNet):
  """MobileNet V1 with the paper's knobs (and those of `MobileNet`).

  Attributes:
    alpha: width multiplier; channels are int(c * alpha) (Keras).
    dropout: dropout rate before the classifier (Keras default 1e-3).
    depth_multiplier: channel multiplier of every depthwise conv.
    conv_type: "separable" (the paper) or "full" (Table 4's Conv MobileNet).
    shallow: drop the five 14x14x512 blocks (Table 5's Shallow MobileNet).
    blocks: the (c, s) table; replace it from config to change the network.
  """
  dropout: float = training_knob(1e-3)
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

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_image_size(min(x.shape[1:3]), "MobileNetV1")
    settings = self.layer_settings()
    x = x.astype(self.dtype)
    x = ConvBN(width(STEM_CHANNELS, self.alpha), 3, 2, stride2_padding(2),
               settings=settings, name="stem")(x, train)
    for i, c, s in block_plan(self.blocks, self.shallow):
      if self.conv_type == "full":
        block = FullConvBlock(width(c, self.alpha), s, stride2_padding(s),
                              settings=settings, name=f"block_{i}")
      else:
        block = SeparableBlock(width(c, self.alpha), s, self.depth_multiplier,
                               stride2_padding(s), settings=settings, name=f"block_{i}")
      x = block(x, train)
    return self.classifier_head(x, train)
