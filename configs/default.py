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

  # Model: every knob of the network, passed to the Flax module.
  config.model = model_v2()
  config.model.alpha = 0.5
  config.model.num_classes = 10
  config.model.dropout = 0.0
  # Few steps on a small set: the running statistics must converge fast
  # (with Keras' 0.999 a digits run evaluates at chance; DESIGN.md).
  config.model.bn_momentum = 0.9
  config.dtype = "float32"   # computation dtype: "float32" | "bfloat16"
  config.sync_bn = False     # True: batch statistics over all devices
  config.depthwise_impl = "auto"  # depthwise conv implementation

  # Input: a TFDS name ("sklearn_digits" is embedded and needs no network;
  # "imagenet2012", "imagenette", "cifar10", "cifar100") or "synthetic".
  config.dataset = "sklearn_digits"
  config.data_dir = config_dict.placeholder(str)  # TFDS data_dir
  config.manual_dir = config_dict.placeholder(str)  # ImageNet's tar files
  config.train_split = "train"
  config.eval_split = "test"
  config.image_size = 32     # rho = image_size / 224
  config.train_augment = "small"  # "inception" | "small" | "none"
  config.random_flip = False  # mirrored digits are other glyphs
  config.eval_preprocess = "resize"  # "center_crop" (0.875) | "resize"
  config.shuffle_buffer = 10_000
  config.batch_size = -1  # global; > 0 overrides per_device_batch_size
  config.per_device_batch_size = 64
  config.eval_batch_size = -1
  config.eval_per_device_batch_size = 64

  # Optimisation.
  config.num_epochs = 60.0
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.optimizer = "adamw"   # "rmsprop_tf" | "sgd" | "adamw"
  config.learning_rate = 3e-3  # for the global batch
  config.lr_schedule = "cosine"  # "cosine" | "exponential" | "constant"
  config.lr_decay_rate = 0.98  # exponential: per `lr_decay_epochs`, staircase
  config.lr_decay_epochs = 1.0
  config.warmup_epochs = 2.0
  config.momentum = 0.9        # rmsprop_tf and sgd
  config.nesterov = False      # sgd
  config.rmsprop_decay = 0.9
  config.rmsprop_epsilon = 1.0
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.weight_decay = 4e-5
  # Parameters whose path matches one of these regexes are not decayed.
  config.no_decay = ("bias", "bn/scale", "depthwise/conv/kernel")
  config.grad_clip_norm = 0.0  # > 0 clips the global norm
  config.label_smoothing = 0.1
  config.ema_decay = 0.0       # > 0 keeps an EMA of the parameters for eval

  # Starting weights: the workdir of a run or of `python -m mobilenet_jax.convert`
  # (Keras weights); a classifier of another class count is trained anew.
  config.init_from = config_dict.placeholder(str)
  config.eval_only = False  # evaluate init_from's (or the workdir's) weights once

  # Loop, evaluation, checkpoints, logs.
  config.log_every_steps = 50
  config.eval_every_steps = 500  # also at the end
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  return config


def imagenet_recipe(config):
  """The papers' TF-slim ImageNet recipe (reference/conformance.md)."""
  config.dataset = "imagenet2012"
  config.train_split = "train"
  config.eval_split = "validation"
  config.model.num_classes = 1000
  config.train_augment = "inception"
  config.random_flip = True
  config.eval_preprocess = "center_crop"
  config.shuffle_buffer = 16_384
  # 16 workers x 96 in the V2 paper: keep the per-device batch, and scale
  # learning_rate with the global batch when the device count differs.
  config.per_device_batch_size = 96
  config.eval_per_device_batch_size = 100
  config.num_epochs = 300.0
  config.optimizer = "rmsprop_tf"   # TF1 RMSPropOptimizer, as the papers
  config.rmsprop_decay = 0.9
  config.momentum = 0.9
  config.rmsprop_epsilon = 1.0
  config.learning_rate = 0.045
  config.lr_schedule = "exponential"  # x0.98 per epoch, staircase
  config.lr_decay_rate = 0.98
  config.lr_decay_epochs = 1.0
  config.warmup_epochs = 0.0
  config.weight_decay = 4e-5
  config.label_smoothing = 0.1
  config.ema_decay = 0.9999
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3
  return config


def imagenet_config(model, arg: str):
  """get_config for an ImageNet variant "alpha_size" of `model` (a ConfigDict)."""
  config = get_config()
  config.model = model
  imagenet_recipe(config)
  config.model.alpha, config.image_size = parse_variant(arg)
  return config


def parse_variant(arg: str):
  """"1.0_224" -> (1.0, 224): width multiplier and input size."""
  try:
    alpha, size = arg.split("_")
    return float(alpha), int(size)
  except ValueError:
    raise ValueError(f"config variant {arg!r} is not 'alpha_size', e.g. "
                     "'1.0_224' or '0.35_160'.") from None
