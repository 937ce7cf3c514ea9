"""MobileNetV2 (Sandler et al., 2018, arXiv 1801.04381), Keras-compatible.

The block table is the paper's Table 2: each row (t, c, n, s) is n inverted
residual blocks with expansion t and c output channels, the first of the n
with stride s. It follows a 3x3 stride-2 stem conv with 32 channels and is
followed by a 1x1 conv to 1280 channels.
"""

from typing import Optional, Sequence, Tuple

import flax.linen as nn

from mobilenet_jax.errors import ConfigError, check_choice
from mobilenet_jax.models.base import MobileNet, check_image_size, training_knob
from mobilenet_jax.models.layers import ACTIVATIONS, ConvBN, InvertedResidual

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#        t,   c,  n, s
BLOCKS: Tuple[Tuple[float, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
SHORTCUTS = ("bottleneck", "expansion", "none")


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
  """Rounds v to the nearest multiple of divisor, never below 90% of v.

  The channel rule of the reference TF-slim and Keras implementations.
  """
  min_value = min_value or divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def block_channels(c: int, alpha: float) -> int:
  """Output channels of a bottleneck: Keras' make_divisible(int(c * alpha), 8)."""
  return make_divisible(int(c * alpha), 8)


def head_channels(alpha: float) -> int:
  """The last conv keeps 1280 channels unless alpha > 1 widens it."""
  return make_divisible(HEAD_CHANNELS * alpha, 8) if alpha > 1.0 else HEAD_CHANNELS


def block_plan(blocks, expansion: Optional[float]):
  """Expands the (t, c, n, s) table into one (t, c, s) per block.

  `expansion` replaces every t except a row's t == 1 (the first row, which
  has no expansion layer in the paper).
  """
  plan = []
  for t, c, n, s in blocks:
    if expansion is not None and t != 1:
      t = expansion
    plan += [(t, c, s)] + [(t, c, 1)] * (n - 1)
  return plan


class MobileNetV2(MobileNet):
  """MobileNetV2 with the paper's knobs (and those of `MobileNet`).

  Attributes:
    alpha: width multiplier; channels are make_divisible(c * alpha, 8).
    dropout: dropout rate before the classifier (TF-slim's 0.2).
    expansion: if set, the expansion ratio t of every block with t != 1.
    bottleneck_activation: after the 1x1 projection: "linear" (the paper),
      "relu6" or "relu" (Figure 6a).
    shortcut: "bottleneck" (the paper), "expansion" or "none" (Figure 6b).
    blocks: the (t, c, n, s) table; replace it from config.
  """
  dropout: float = training_knob(0.2)
  expansion: Optional[float] = None
  bottleneck_activation: str = "linear"
  shortcut: str = "bottleneck"
  blocks: Sequence[Tuple[float, int, int, int]] = BLOCKS

  def __post_init__(self):
    check_choice("model.bottleneck_activation", self.bottleneck_activation,
                 tuple(ACTIVATIONS))
    check_choice("model.shortcut", self.shortcut, SHORTCUTS)
    if self.expansion is not None and not self.expansion >= 1:
      raise ConfigError(f"model.expansion={self.expansion!r} is not valid; "
                        "use a ratio >= 1 (the paper uses 6) or None.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_image_size(min(x.shape[1:3]), "MobileNetV2")
    settings = self.layer_settings()
    x = x.astype(self.dtype)
    x = ConvBN(make_divisible(STEM_CHANNELS * self.alpha), 3, 2, "SAME",
               settings=settings, name="stem")(x, train)
    expansion = None  # the first block (t = 1) has no expansion layer
    for i, (t, c, s) in enumerate(block_plan(self.blocks, self.expansion)):
      x, expansion = InvertedResidual(
          block_channels(c, self.alpha), t, s, self.bottleneck_activation,
          self.shortcut, settings=settings, name=f"block_{i}")(x, expansion, train)
    x = ConvBN(head_channels(self.alpha), 1, settings=settings, name="head")(x, train)
    return self.classifier_head(x, train)
