"""MobileNetV2 (Sandler et al., 2018, arXiv 1801.04381), Keras-compatible.

The block table is the paper's Table 2: each row (t, c, n, s) is n inverted
residual blocks with expansion t and c output channels, the first of the n
with stride s. It follows a 3x3 stride-2 stem conv with 32 channels and is
followed by a 1x1 conv to 1280 channels.
"""

from typing import List, Optional, Sequence, Tuple

import flax.linen as nn

from mobilenet_jax.errors import ConfigError, check_choice
from mobilenet_jax.models.base import (ALIAS, HEAD, STAGE, TAP, Endpoint, MobileNet,
                                       check_image_size, stride_plan, training_knob)
from mobilenet_jax.models.layers import ACTIVATIONS, ConvBN, InvertedResidual, value

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


def block_channels(c: int, alpha: float, divisor: int = 8, min_depth: int = 8) -> int:
  """Output channels of a bottleneck: Keras' make_divisible(int(c * alpha), 8);
  TF-slim's divisible_by and min_depth are the 8s."""
  return make_divisible(int(c * alpha), divisor, min_depth)


def head_channels(alpha: float, divisor: int = 8, min_depth: int = 8,
                  finegrain: bool = True) -> int:
  """The last conv keeps 1280 channels unless alpha > 1 widens it (Keras, and
  TF-slim's finegrain_classification_mode); without finegrain mode it follows
  alpha down too (TF-slim's default)."""
  if alpha > 1.0 or not finegrain:
    return make_divisible(HEAD_CHANNELS * alpha, divisor, min_depth)
  return HEAD_CHANNELS


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


def layer_strides(blocks, expansion: Optional[float], output_stride: int):
  """(stride, dilation) of the stem and of each block, after output_stride."""
  strides = [2] + [s for _, _, s in block_plan(blocks, expansion)]
  return stride_plan(strides, output_stride)


class MobileNetV2(MobileNet):
  """MobileNetV2 with the paper's knobs (and those of `MobileNet`).

  Attributes:
    alpha: width multiplier; channels are make_divisible(c * alpha, 8).
    min_depth, divisible_by: TF-slim's width rounding (Keras's 8 and 8).
    finegrain_classification_mode: keep the last layer at 1280 channels when
      alpha < 1 (Keras; TF-slim's default is False, which shrinks it).
    dropout: dropout rate before the classifier (TF-slim's 0.2).
    expansion: if set, the expansion ratio t of every block with t != 1.
    bottleneck_activation: after the 1x1 projection: "linear" (the paper),
      "relu6" or "relu" (Figure 6a).
    activation: after every other conv (stem, expansion, depthwise, head):
      "relu6" (the paper, "because of its robustness when used with
      low-precision computation"), "relu" or "linear".
    shortcut: "bottleneck" (the paper), "expansion" or "none" (Figure 6b).
    blocks: the (t, c, n, s) table; replace it from config.
  Endpoints (TF-slim's names): layer_1 (the stem); for block k = 2.. (the
  table's rows expanded) layer_k/expansion_output (where t != 1),
  layer_k/depthwise_output and layer_k, also named layer_k/output as in
  TF-slim; then the 1x1 head conv (layer_19 with the paper's table: 1280
  channels), which `stage_endpoints` leaves out as timm's features_only does.
  `padding` changes nothing here: Keras pads V2 as "SAME".
  """
  dropout: float = training_knob(0.2)
  min_depth: int = 8
  divisible_by: int = 8
  finegrain_classification_mode: bool = True
  expansion: Optional[float] = None
  bottleneck_activation: str = "linear"
  activation: str = "relu6"
  shortcut: str = "bottleneck"
  blocks: Sequence[Tuple[float, int, int, int]] = BLOCKS

  def __post_init__(self):
    check_choice("model.bottleneck_activation", self.bottleneck_activation,
                 tuple(ACTIVATIONS))
    check_choice("model.activation", self.activation, tuple(ACTIVATIONS))
    check_choice("model.shortcut", self.shortcut, SHORTCUTS)
    if self.expansion is not None and not self.expansion >= 1:
      raise ConfigError(f"model.expansion={self.expansion!r} is not valid; "
                        "use a ratio >= 1 (the paper uses 6) or None.")
    if int(self.divisible_by) != self.divisible_by or self.divisible_by < 1:
      raise ConfigError(f"model.divisible_by={self.divisible_by!r} is not valid; "
                        "use an integer >= 1 (Keras and TF-slim: 8).")
    super().__post_init__()

  def endpoint_plan(self) -> List[Endpoint]:
    plan = [Endpoint("layer_1", "stem", 2, STAGE)]
    reduction = 2
    for i, (t, _, s) in enumerate(block_plan(self.blocks, self.expansion)):
      layer = f"layer_{i + 2}"
      if t != 1:
        plan.append(Endpoint(f"{layer}/expansion_output", f"block_{i}/expand", reduction,
                             TAP))
      reduction *= s
      plan += [Endpoint(f"{layer}/depthwise_output", f"block_{i}/depthwise", reduction, TAP),
               Endpoint(layer, f"block_{i}", reduction, STAGE),
               Endpoint(f"{layer}/output", f"block_{i}", reduction, ALIAS)]
    blocks = len(block_plan(self.blocks, self.expansion))
    return plan + [Endpoint(f"layer_{blocks + 2}", "head", reduction, HEAD)]

  def channels(self, c: int) -> int:
    return block_channels(c, self.alpha, self.divisible_by, self.min_depth)

  @nn.compact
  def __call__(self, x, train: bool = False, endpoints: bool = False):
    """Logits (or what include_top, pooling and num_classes say), or with
    endpoints=True a dict of every endpoint's feature map (no head)."""
    check_image_size(min(x.shape[1:3]), "MobileNetV2")
    settings = self.layer_settings()
    (stem_stride, _), *strides = layer_strides(self.blocks, self.expansion,
                                               self.output_stride)
    x = self.quantize(x.astype(self.dtype), train, "input_quant")
    x = ConvBN(make_divisible(STEM_CHANNELS * self.alpha, self.divisible_by, self.min_depth),
               3, stem_stride, "SAME", activation=self.activation, settings=settings,
               name="stem")(x, train, defer=True)
    ends = {"layer_1": value(x)}
    expansion = None  # the first block (t = 1) has no expansion layer
    plan = block_plan(self.blocks, self.expansion)
    for i, ((t, c, _), (s, rate)) in enumerate(zip(plan, strides)):
      x, expansion, depthwise = InvertedResidual(
          self.channels(c), t, s, self.bottleneck_activation, self.shortcut, rate,
          settings=settings, activation=self.activation, name=f"block_{i}")(x, expansion,
                                                                           train)
      layer = f"layer_{i + 2}"
      if t != 1:
        ends[f"{layer}/expansion_output"] = expansion
      ends.update({f"{layer}/depthwise_output": depthwise, layer: x, f"{layer}/output": x})
    x = ConvBN(head_channels(self.alpha, self.divisible_by, self.min_depth,
                             self.finegrain_classification_mode),
               1, activation=self.activation, settings=settings, name="head")(x, train)
    ends[f"layer_{len(plan) + 2}"] = x
    if endpoints:
      return ends
    return self.classifier_head(x, train)
