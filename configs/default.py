"""Default config: a small MobileNetV2 on the embedded 8x8 digits set.

Every field is defined here; other configs start from `get_config()` and change
only what differs, so a diff of two configs is the experiment.
"""

import ml_collections
from ml_collections import config_dict


def model_v2():
  """Every MobileNetV2 knob (see mobilenet_jax/models/mobilenet_v2.py)."""
  return ml_collections.ConfigDict(dict(
      name="mobilenet_v2",
      num_classes=1000,
      alpha=1.0,
      expansion=config_dict.placeholder(float),  # None: the paper's table (6)
      bottleneck_activation="linear",  # "linear" | "relu6" | "relu"
      shortcut="bottleneck",           # "bottleneck" | "expansion" | "none"
      dropout=0.2,
      include_top=True,
      bn_momentum=0.997,
      bn_epsilon=1e-3,
  ))


def model_v1():
  """Every MobileNet V1 knob (see mobilenet_jax/models/mobilenet_v1.py)."""
  return ml_collections.ConfigDict(dict(
      name="mobilenet_v1",
      num_classes=1000,
      alpha=1.0,
      depth_multiplier=1,
      dropout=1e-3,
      include_top=True,
      conv_type="separable",  # "separable" | "full" (Table 4)
      shallow=False,          # Table 5's Shallow MobileNet
      bn_momentum=0.997,
      bn_epsilon=1e-3,
  ))


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_v2()
  config.model.alpha = 0.5
  config.model.num_classes = 10
  config.model.dropout = 0.0
  # Few steps on a small set: the running statistics must converge fast.
  config.model.bn_momentum = 0.9
  # Input resolution; the resolution multiplier rho is image_size / 224.
  config.image_size = 32
  return config


def parse_variant(arg: str):
  """"1.0_224" -> (1.0, 224): width multiplier and input size."""
  try:
    alpha, size = arg.split("_")
    return float(alpha), int(size)
  except ValueError:
    raise ValueError(f"config variant {arg!r} is not 'alpha_size', e.g. "
                     "'1.0_224' or '0.35_160'.") from None
