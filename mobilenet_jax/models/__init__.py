"""Model registry: `config.model.name` -> Flax module class.

`get_model(config.model)` turns the rest of `config.model` into the module's
attributes, so a sweep changes a string and a few numbers, never code.
"""

import dataclasses
from typing import Any, Mapping

from mobilenet_jax.errors import ConfigError, check_choice
from mobilenet_jax.models.mobilenet_v1 import MobileNetV1
from mobilenet_jax.models.mobilenet_v2 import MobileNetV2

MODELS = {
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
}


def model_attributes(name: str):
  """The attribute names a registered model accepts from config."""
  check_choice("model.name", name, tuple(MODELS))
  return tuple(f.name for f in dataclasses.fields(MODELS[name])
               if f.init and f.name not in ("parent", "name"))


# Attributes that change training or speed but not the function computed.
NOT_ARCHITECTURE = ("dropout", "bn_momentum", "bn_axis_name", "depthwise_impl",
                    "pointwise_impl", "dtype")


def architecture(model) -> dict:
  """The attributes of a built model that decide the function it computes."""
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
          if f.init and f.name not in NOT_ARCHITECTURE + ("parent", "name")}


def get_model(model_config: Mapping[str, Any], **overrides):
  """Builds the module named by model_config["name"] from the other keys.

  Raises ConfigError naming an unknown model or attribute and the valid ones.
  """
  attrs = dict(model_config)
  attrs.update(overrides)
  name = attrs.pop("name", None)
  valid = model_attributes(name)
  for key in attrs:
    if key not in valid:
      raise ConfigError(f"model.{key} is not an attribute of {name}; valid "
                        f"keys: {', '.join(valid)}.")
  if "blocks" in attrs:  # config lists -> hashable tuples
    attrs["blocks"] = tuple(tuple(row) for row in attrs["blocks"])
  return MODELS[name](**attrs)
