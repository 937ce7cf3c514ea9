"""The papers' ImageNet recipe (TF-slim's); variant "v{1,2}_alpha_size".

  --config configs/imagenet.py               # MobileNetV2 1.0 @ 224
  --config configs/imagenet.py:v1_0.5_160    # MobileNet V1 0.5 @ 160 (rho 0.71)

The base that configs/mobilenet_v1.py, mobilenet_v2.py and tpu.py derive from.
What changes from configs/default.py: the network has every knob at the paper's
value (defaults.model_config) at the variant's width and input size, trained on
ImageNet with the recipe of the V2 paper, section 6.1 (docs/conformance.md).
"""

from mobilenet_jax import defaults

MODELS = {"v1": "mobilenet_v1", "v2": "mobilenet_v2"}


def get_config(arg="v2_1.0_224"):
  family, _, variant = arg.partition("_")
  if family not in MODELS or not variant:
    raise ValueError(f"config variant {arg!r}: use v1_ALPHA_SIZE or v2_ALPHA_SIZE, "
                     "e.g. v2_1.0_224.")
  return recipe(MODELS[family], variant)


def parse_variant(arg: str):
  """"1.0_224" -> (1.0, 224): width multiplier and input size."""
  try:
    alpha, size = arg.split("_")
    return float(alpha), int(size)
  except ValueError:
    raise ValueError(f"config variant {arg!r} is not 'alpha_size', e.g. "
                     "'1.0_224' or '0.35_160'.") from None


def recipe(name: str, variant: str = "1.0_224"):
  """Network `name` at the variant's width and size, with the papers' recipe."""
  alpha, size = parse_variant(variant)
  config = defaults.get_config()
  config.model = defaults.model_config(name)
  config.model.alpha = alpha
  config.model.num_classes = 1000
  config.image_size = size

  config.dataset = "imagenet2012"
  config.train_split = "train"
  config.eval_split = "validation"
  config.train_augment = "inception"
  config.random_flip = True
  config.eval_preprocess = "center_crop"
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
