"""Model registry: `config.model.name` -> Flax module class.

`get_model(config.model)` turns the rest of `config.model` into the module's
attributes, so a sweep changes a string and a few numbers, never code. Each
knob is declared once, as an attribute of the module with its default
(models/base.py says which kinds there are); `default_config(name)` derives the
config's model section from those declarations.
"""

import dataclasses
from typing import Any, Dict, Mapping

from mobilenet_jax.errors import ConfigError, check_choice
from mobilenet_jax.models.base import ARCHITECTURE, IMPLEMENTATION, kind
from mobilenet_jax.models.mobilenet_v1 import MobileNetV1
from mobilenet_jax.models.mobilenet_v2 import MobileNetV2

MODELS = {
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
}
MODEL_NAMES = {cls: name for name, cls in MODELS.items()}


def _fields(name: str):
  check_choice("model.name", name, tuple(MODELS))
  return [f for f in dataclasses.fields(MODELS[name])
          if f.init and f.name not in ("parent", "name")]


def model_attributes(name: str):
  """Every attribute a registered model accepts (knobs and implementation)."""
  return tuple(f.name for f in _fields(name))


def knobs(name: str):
  """The dataclass fields of `name` that config.model sets, in declaration order."""
  return [f for f in _fields(name) if kind(f) != IMPLEMENTATION]


def default_config(name: str) -> Dict[str, Any]:
  """{"name": name, knob: default, ...}: the model section of a config."""
  return {"name": name, **{f.name: f.default for f in knobs(name)}}


def architecture(model) -> dict:
  """The knobs of a built model that decide the function it computes and its
  parameters (not dropout, BN momentum or how it is computed)."""
  return {f.name: getattr(model, f.name) for f in knobs(MODEL_NAMES[type(model)])
          if kind(f) == ARCHITECTURE}



def get_model(model_config: Mapping[str, Any], **overrides):
  """Builds the module named by model_config["name"] from the other keys.

  Keys left out take the module's defaults, which are the config's defaults.
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
