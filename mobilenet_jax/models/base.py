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
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from mobilenet_jax.errors import ConfigError

KIND = "kind"
ARCHITECTURE, TRAINING, IMPLEMENTATION = "architecture", "training", "implementation"
MIN_IMAGE_SIZE = 32  # five stride-2 stages; Keras requires the same


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
    dtype: computation dtype (parameters stay float32).
  Each network adds its own knobs, `dropout` among them (its default differs).
  The resolution multiplier rho is the input size / 224.
  """
  num_classes: int = 1000
  alpha: float = 1.0
  include_top: bool = True
  bn_momentum: float = training_knob(0.997)
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = implementation(None)
  depthwise_impl: str = implementation("auto")
  pointwise_impl: str = implementation("dot")
  dtype: Any = implementation(jnp.float32)

  def __post_init__(self):
    if not self.alpha > 0:
      raise ConfigError(f"model.alpha={self.alpha!r} is not valid; the width "
                        "multiplier must be > 0 (e.g. 1.0, 0.75, 0.5, 0.35).")
    if not 0 <= self.dropout < 1:
      raise ConfigError(f"model.dropout={self.dropout!r} is not valid; use a "
                        "rate in [0, 1).")
    if int(self.num_classes) != self.num_classes or self.num_classes < 1:
      raise ConfigError(f"model.num_classes={self.num_classes!r} is not valid; "
                        "use an integer >= 1.")
    if not 0 <= self.bn_momentum < 1:
      raise ConfigError(f"model.bn_momentum={self.bn_momentum!r} is not valid; "
                        "use a decay in [0, 1), e.g. 0.997 (TF-slim) or 0.9.")
    if not self.bn_epsilon > 0:
      raise ConfigError(f"model.bn_epsilon={self.bn_epsilon!r} is not valid; "
                        "use a value > 0, e.g. 1e-3.")
    super().__post_init__()

  def layer_settings(self) -> LayerSettings:
    return LayerSettings(self.bn_momentum, self.bn_epsilon, self.bn_axis_name,
                         self.depthwise_impl, self.pointwise_impl, self.dtype)

  def classifier_head(self, x, train: bool):
    """Global average pool -> dropout -> dense (float32 logits).

    Without the top it returns the last feature map, as Keras does with
    include_top=False.
    """
    if not self.include_top:
      return x.astype(jnp.float32)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return x.astype(jnp.float32)
