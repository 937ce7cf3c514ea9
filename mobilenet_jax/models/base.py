"""What MobileNet V1 and V2 share: the knobs both have, the classifier head, and
the settings every layer takes.

A knob is a module attribute, declared once with its default; the config's model
section is derived from these declarations (`models.default_config`). Each field
says what kind of attribute it is:
  architecture (the default): decides the function computed and the parameters;
  training: changes how the network trains, not what it computes (dropout, BN
    momentum): weights move between runs that differ only here;
  implementation: how it is computed (dtype, depthwise kernel, sync BN); set by
    the trainer from the top-level config, never in config.model.
"""

import dataclasses
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from mobilenet_jax.errors import ConfigError, check_choice
from mobilenet_jax.ops import quantize

KIND = "kind"
ARCHITECTURE, TRAINING, IMPLEMENTATION = "architecture", "training", "implementation"
MIN_IMAGE_SIZE = 32  # five stride-2 stages; Keras requires the same
OUTPUT_STRIDES = (8, 16, 32)
PADDINGS = ("keras", "same")
POOLINGS = (None, "avg", "max")
# Initialisers of every convolution and classifier kernel, by name: Flax's
# default, and Keras's (Keras Applications' MobileNets; glorot is symmetric in
# fan-in and fan-out, so a depthwise kernel gets the same scale in both layouts).
KERNEL_INITS = {"lecun_normal": nn.initializers.lecun_normal(),
                "glorot_uniform": nn.initializers.glorot_uniform()}


def training_knob(default):
  """A knob that changes training but not the function computed."""
  return dataclasses.field(default=default, metadata={KIND: TRAINING})


def implementation(default):
  """An attribute that changes how, not what, the network computes."""
  return dataclasses.field(default=default, metadata={KIND: IMPLEMENTATION})


def check_image_size(size: int, name: str):
  """Raises ConfigError for inputs the network's strides cannot take."""
  if size < MIN_IMAGE_SIZE:
    raise ConfigError(
        f"image_size={size} is too small for {name}, which downsamples by 32; "
        f"use image_size >= {MIN_IMAGE_SIZE}.")


def kind(field: dataclasses.Field) -> str:
  return field.metadata.get(KIND, ARCHITECTURE)


@dataclasses.dataclass(frozen=True)
class LayerSettings:
  """What every conv + batch-norm layer of a network takes from the network."""
  bn_momentum: float = 0.997
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = None  # mesh axis of synchronised BN
  depthwise_impl: str = "auto"  # ops/depthwise.py
  pointwise_impl: str = "dot"   # ops/pointwise.py
  dtype: Any = jnp.float32
  frozen_bn: Tuple[str, ...] = ()  # module paths whose batch norm is frozen
  batchnorm_impl: str = "fused"  # ops/batchnorm.py, or "flax"
  kernel_init: str = "lecun_normal"  # a KERNEL_INITS name
  quantization: Optional[quantize.Quantization] = None  # None: float

  def initializer(self):
    return KERNEL_INITS[self.kernel_init]

  def bn_is_frozen(self, path: Sequence[str]) -> bool:
    return bn_is_frozen("/".join(path), self.frozen_bn)


def bn_is_frozen(path: str, frozen: Sequence[str]) -> bool:
  """Whether the layer at `path` ("block_3/expand") lies in a frozen subtree."""
  return any(path == p or path.startswith(p + "/") or p == "" for p in frozen)


STAGE, TAP, HEAD, ALIAS = "stage", "tap", "head", "alias"


class Endpoint(NamedTuple):
  """A named feature map (TF-slim's end_points names), the module path of the
  layer that makes it, its nominal reduction (before output_stride) and its role:
    stage: the stem's or a block's output, on the main chain (timm's
      features_only levels are the last of these at each reduction);
    tap: inside a block (an expansion or depthwise output);
    head: V2's last 1x1 conv (layer_19, 1280 channels), after the last stage;
      timm's feature network has no such conv, TF-slim's and SSDLite's use it;
    alias: TF-slim's second name for the endpoint before it (layer_k/output,
      the tf.identity that ends each expanded_conv: the same tensor as layer_k).
  """
  name: str
  path: str
  reduction: int
  role: str


def stride_plan(strides: Sequence[int], output_stride: int) -> List[Tuple[int, int]]:
  """(stride, dilation rate) per layer, as TF-slim's output_stride rule: once
  the product of strides reaches output_stride, later strides become 1 and the
  rate grows by what they would have been; a layer runs at the rate before its
  own (converted) stride."""
  current, rate, plan = 1, 1, []
  for s in strides:
    if current == output_stride:
      plan.append((1, rate))
      rate *= s
    else:
      plan.append((s, 1))
      current *= s
  return plan


class MobileNet(nn.Module):
  """The knobs MobileNet V1 and V2 share.

  Attributes:
    num_classes: classifier outputs.
    alpha: width multiplier, > 0.
    include_top: False returns the last feature map (as Keras does).
    bn_momentum, bn_epsilon: batch norm running-average decay (TF-slim's 0.997)
      and epsilon.
    bn_axis_name: mesh axis to average batch statistics over (sync BN).
    depthwise_impl: "auto" | "native" | "shift" | "lax" (ops/depthwise.py).
    pointwise_impl: "dot" | "conv" (ops/pointwise.py; "conv" for TFLite).
    batchnorm_impl: "fused" (batch norm and its activation with a hand-written
      VJP, ops/batchnorm.py) | "flax" (flax.linen.BatchNorm, then the
      activation: the reference it is tested against).
    dtype: computation dtype (parameters stay float32).
    output_stride: 32 (none), 16 or 8: the last strides become 1 and the
      depthwise convolutions after them are dilated (TF-slim, DeepLab).
    padding: "keras" (Keras Applications: V1 pads stride-2 convs (0, 1) and
      runs them VALID) or "same" (TF "SAME" everywhere, as TF-slim and the
      papers' checkpoints); they differ at odd sizes. V2 is "SAME" in both.
    pooling: with include_top=False, None returns the feature map, "avg" or
      "max" its global pool (as Keras).
    freeze_bn: "none", "all", or an endpoint name: batch norm up to and
      including that endpoint normalises with its running statistics in
      training, and its statistics and scale/offset do not move.
    kernel_init: "lecun_normal" (Flax's default) or "glorot_uniform" (Keras's)
      for every convolution and classifier kernel; the papers name none.
    quantization: None (float) or an ops.quantize.Quantization: int8 weights
      (BN folded in) and activations simulated as TFLite computes them, for
      quantization-aware training and post-training quantization.
  Each network adds its own knobs, `dropout` and `min_depth` among them (their
  defaults differ). The resolution multiplier rho is the input size / 224.
  num_classes=0 returns the pooled pre-logits (TF-slim, timm).
  """
  num_classes: int = 1000
  alpha: float = 1.0
  include_top: bool = True
  output_stride: int = 32
  padding: str = "keras"
  pooling: Optional[str] = None
  bn_momentum: float = training_knob(0.997)
  bn_epsilon: float = 1e-3
  freeze_bn: str = training_knob("none")
  kernel_init: str = training_knob("lecun_normal")
  bn_axis_name: Optional[str] = implementation(None)
  depthwise_impl: str = implementation("auto")
  pointwise_impl: str = implementation("dot")
  batchnorm_impl: str = implementation("fused")
  dtype: Any = implementation(jnp.float32)
  quantization: Optional[quantize.Quantization] = implementation(None)

  def __post_init__(self):
    if not self.alpha > 0:
      raise ConfigError(f"model.alpha={self.alpha!r} is not valid; the width "
                        "multiplier must be > 0 (e.g. 1.0, 0.75, 0.5, 0.35).")
    if not 0 <= self.dropout < 1:
      raise ConfigError(f"model.dropout={self.dropout!r} is not valid; use a "
                        "rate in [0, 1).")
    if int(self.num_classes) != self.num_classes or self.num_classes < 0:
      raise ConfigError(f"model.num_classes={self.num_classes!r} is not valid; "
                        "use an integer >= 1, or 0 for the pooled features.")
    check_choice("model.output_stride", self.output_stride, OUTPUT_STRIDES)
    check_choice("model.padding", self.padding, PADDINGS)
    check_choice("model.pooling", self.pooling, POOLINGS)
    check_choice("model.kernel_init", self.kernel_init, KERNEL_INITS)
    if int(self.min_depth) != self.min_depth or self.min_depth < 1:
      raise ConfigError(f"model.min_depth={self.min_depth!r} is not valid; use an "
                        "integer >= 1 (the fewest channels a layer keeps).")
    plan = self.endpoint_plan()
    if self.freeze_bn not in ("none", "all") + tuple(e.name for e in plan):
      aliases = " (or TF-slim's layer_k/output for a block's layer_k)" if any(
          e.role == ALIAS for e in plan) else ""
      raise ConfigError(
          f"model.freeze_bn={self.freeze_bn!r} is not valid; use 'none', 'all' or an "
          f"endpoint name: {', '.join(e.name for e in plan if e.role != ALIAS)}{aliases}.")
    if not 0 <= self.bn_momentum < 1:
      raise ConfigError(f"model.bn_momentum={self.bn_momentum!r} is not valid; "
                        "use a decay in [0, 1), e.g. 0.997 (TF-slim) or 0.9.")
    if not self.bn_epsilon > 0:
      raise ConfigError(f"model.bn_epsilon={self.bn_epsilon!r} is not valid; "
                        "use a value > 0, e.g. 1e-3.")
    super().__post_init__()

  def layer_settings(self) -> LayerSettings:
    return LayerSettings(self.bn_momentum, self.bn_epsilon, self.bn_axis_name,
                         self.depthwise_impl, self.pointwise_impl, self.dtype,
                         self.frozen_bn_paths(), self.batchnorm_impl, self.kernel_init,
                         self.quantization)

  # Each network defines endpoint_plan() -> List[Endpoint]: every endpoint it
  # computes, in order, each alias right after the endpoint it names again.

  def frozen_bn_paths(self) -> Tuple[str, ...]:
    """Module paths whose batch norm `freeze_bn` freezes ("" is all)."""
    if self.freeze_bn == "none":
      return ()
    if self.freeze_bn == "all":
      return ("",)
    paths = []
    for end in self.endpoint_plan():
      if end.role != ALIAS:
        paths.append(end.path)
      if end.name == self.freeze_bn:
        return tuple(paths)
    raise AssertionError(self.freeze_bn)  # checked in __post_init__

  def stage_endpoints(self, out_indices: Sequence[int] = (0, 1, 2, 3, 4)) -> List[str]:
    """timm's `out_indices` of `features_only=True`: the last block output at
    each nominal reduction 2, 4, 8, 16, 32 (stage i has reduction 2 ** (i + 1)).

    timm's convention (timm/models/_efficientnet_builder.py, feature_location
    "bottleneck"): the last block before each stride change, and no head conv.
    V2: layer_2, layer_4, layer_7, layer_14, layer_18 (16, 24, 32, 96, 320
    channels at alpha 1); its 1x1 head conv layer_19 (1280) is not a stage but
    stays an endpoint by TF-slim's name (SSDLite's and TF detection's C5).
    V1: Conv2d_1/3/5/11/13_pointwise (64 ... 1024). The same layers at every
    output_stride, as timm's; past it their maps stay at output_stride.
    """
    last = {}
    for end in self.endpoint_plan():
      if end.role == STAGE:
        last[end.reduction] = end.name
    stages = [last[r] for r in sorted(last)]
    for i in out_indices:
      if not 0 <= i < len(stages):
        raise ConfigError(f"out_indices {tuple(out_indices)} is not valid; stages "
                          f"are 0..{len(stages) - 1} (reductions 2..32).")
    return [stages[i] for i in out_indices]

  def classifier_head(self, x, train: bool):
    """Global average pool -> dropout -> dense (float32 logits); with
    num_classes=0 the pooled features. Without the top, the last feature map
    or its `pooling`, as Keras does with include_top=False.
    """
    if not self.include_top:
      if self.pooling == "max":
        x = jnp.max(x, axis=(1, 2))
      elif self.pooling == "avg":
        x = jnp.mean(x, axis=(1, 2))
      return x.astype(jnp.float32)
    x = self.quantize(jnp.mean(x, axis=(1, 2)), train, "pool_quant")
    if self.num_classes == 0:
      return x.astype(jnp.float32)
    x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
    init = KERNEL_INITS[self.kernel_init]
    if self.quantization is None:
      x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=init, name="classifier")(x)
    else:
      x = quantize.QuantDense(self.num_classes, self.quantization, self.bn_momentum, init,
                              self.bn_axis_name, self.dtype, name="classifier")(x, train)
    return x.astype(jnp.float32)

  def quantize(self, x, train: bool, name: str):
    """`x` as int8 holds it in a quantized network (unchanged in a float one)."""
    if self.quantization is None:
      return x
    return quantize.ActQuant(self.quantization, self.bn_momentum,
                             axis_name=self.bn_axis_name, name=name)(x, train)
