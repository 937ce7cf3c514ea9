"""What MobileNet V1 and V2 share: the classifier head and knob checks."""

import flax.linen as nn
import jax.numpy as jnp

from mobilenet_jax.errors import ConfigError

MIN_IMAGE_SIZE = 32  # five stride-2 stages; Keras requires the same

def check_image_size(size: int, name: str):
  """Raises ConfigError for inputs the network's strides cannot take."""
  if size < MIN_IMAGE_SIZE:
    raise ConfigError(
        f"image_size={size} is too small for {name}, which downsamples by 32; "
        f"use image_size >= {MIN_IMAGE_SIZE}.")

def classifier_head(model: nn.Module, x, train: bool):
  """Global average pool -> dropout -> dense (float32 logits).

  Without the top it returns the last feature map, as Keras does with
  include_top=False.
  """
  if not model.include_top:
    return x.astype(jnp.float32)
  x = jnp.mean(x, axis=(1, 2))
  x = nn.Dropout(model.dropout, deterministic=not train, name="dropout")(x)
  x = nn.Dense(model.num_classes, dtype=model.dtype, name="classifier")(x)
  return x.astype(jnp.float32)

def validate_common(model: nn.Module):
  """Checks the knobs V1 and V2 share; raises ConfigError naming the key."""
  if not model.alpha > 0:
    raise ConfigError(f"model.alpha={model.alpha!r} is not valid; the width "
                      "multiplier must be > 0 (e.g. 1.0, 0.75, 0.5, 0.35).")
  if not 0 <= model.dropout < 1:
    raise ConfigError(f"model.dropout={model.dropout!r} is not valid; use a "
                      "rate in [0, 1).")
  if model.num_classes < 1:
    raise ConfigError(f"model.num_classes={model.num_classes!r} is not valid; "
                      "use an integer >= 1.")
