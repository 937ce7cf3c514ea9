"""The default config: every field of the project's config, declared once.

Each field has its default, its type and what it allows (`schema.field`). The
defaults are a small MobileNetV2 on the embedded 8x8 digits set. Config files
(configs/*.py) start from `get_config()` and change only what differs, so a
diff of two configs is the experiment. The model section is derived from the
knobs the Flax modules declare (`models.default_config`).

`validate(config)` checks every value against its declaration before any work
starts (the entry points call it), and raises ConfigError with one line naming
the key, the value and what is allowed.
"""

from typing import Optional

import ml_collections
from ml_collections import config_dict

from mobilenet_jax import models, parallel
from mobilenet_jax.models.base import MIN_IMAGE_SIZE
from mobilenet_jax.ops.batchnorm import BATCHNORM_IMPLS
from mobilenet_jax.ops.depthwise import IMPLS
from mobilenet_jax.ops.quantize import WEIGHTS
from mobilenet_jax.schema import (NOT_EMPTY, REGEXES, Field, above, at_least,
                                  check_fields, check_keys, check_that, conforms,
                                  field, in_range, not_valid, noun, one_of,
                                  placeholder_type, unless_steps)
from mobilenet_jax.training.optim import OPTIMIZERS, SCHEDULES

DTYPES = ("float32", "bfloat16")
TRAIN_AUGMENT = ("inception", "small", "none")
EVAL_PREPROCESS = ("center_crop", "resize")  # "center_crop" keeps 0.875
QUANTIZATIONS = ("none", "int8")


def model_config(name: str) -> ml_collections.ConfigDict:
  """The model section for `name`: every knob of the module with its default."""
  fields = {f.name: f for f in models.knobs(name)}
  section = ml_collections.ConfigDict()
  for key, value in models.default_config(name).items():
    if value is None:  # overridable from the command line
      value = config_dict.placeholder(placeholder_type(fields[key].type))
    section[key] = value
  return section


def for_digits(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A model section set for the digits: 10 classes, no dropout, BN momentum 0.9."""
  model.num_classes = 10
  model.dropout = 0.0
  # Few steps on a small set: the running statistics must converge fast
  # (with Keras' 0.999 a digits run evaluates at chance; docs/design.md).
  model.bn_momentum = 0.9
  return model


def digits_model() -> ml_collections.ConfigDict:
  model = for_digits(model_config("mobilenet_v2"))
  model.alpha = 0.5
  return model


def positive_int(key: str, default: int, doc: str = "") -> Field:
  return field(key, default, at_least(1), doc)


FIELDS = (
    field("seed", 0, at_least(0)),

    # Model: every knob of the network, passed to the Flax module.
    field("model", digits_model, doc="checked by building the model"),
    field("dtype", "float32", one_of(DTYPES), "computation dtype"),
    field("sync_bn", False, doc="True: batch statistics over all devices"),
    field("depthwise_impl", "auto", one_of(IMPLS),
          "depthwise conv implementation (ops/depthwise.py)"),
    field("batchnorm_impl", "fused", one_of(BATCHNORM_IMPLS),
          "batch norm: fused with its activation (ops/batchnorm.py) or flax's"),

    # Low precision (ops/quantize.py): int8 as TFLite computes it, BN folded.
    field("quantization", "none", one_of(QUANTIZATIONS),
          "int8: quantization-aware training (and evaluation) of the network"),
    field("quantize_weights", "per_channel", one_of(WEIGHTS),
          "int8 weight scales: one per output channel (TFLite's) or per tensor"),
    field("quantize_activations", True, doc="int8: the activations too"),
    field("ptq_eval", (), check_that(f"a list of {', '.join(WEIGHTS)}",
                                     lambda v: all(w in WEIGHTS for w in v)),
          "after training, also evaluate int8 post-training quantization with "
          "these weight scales (results: eval_top1_ptq_<scales>)"),
    positive_int("ptq_calibration_examples", 200,
                 "training images whose activation ranges calibrate ptq_eval "
                 "(the export command's --calibration_examples)"),

    # Input: a TFDS name ("sklearn_digits" is embedded and needs no network;
    # "imagenet2012", "imagenette", "cifar10", "cifar100") or "synthetic".
    field("dataset", "sklearn_digits", NOT_EMPTY),
    field("data_dir", None, doc="TFDS data_dir", type=Optional[str]),
    field("manual_dir", None, doc="ImageNet's tar files", type=Optional[str]),
    field("train_split", "train", NOT_EMPTY),
    field("eval_split", "test", NOT_EMPTY),
    field("image_size", 32, at_least(MIN_IMAGE_SIZE),
          "rho = image_size / 224; the network downsamples by 32"),
    field("train_augment", "small", one_of(TRAIN_AUGMENT)),
    field("random_flip", False, doc="mirrored digits are other glyphs"),
    field("eval_preprocess", "resize", one_of(EVAL_PREPROCESS)),
    field("input_workers", None, check_that("None (from the CPU count) or an integer >= 0",
                                            lambda v: v is None or v >= 0),
          "Grain worker processes preparing batches; 0: threads in the "
          "training process", type=Optional[int]),
    field("batch_size", -1, doc="global; > 0 overrides per_device_batch_size"),
    positive_int("per_device_batch_size", 64),
    field("eval_batch_size", -1, doc="> 0 overrides eval_per_device_batch_size"),
    positive_int("eval_per_device_batch_size", 64),

    # Optimisation.
    field("num_epochs", 60.0, unless_steps(above(0))),
    field("num_train_steps", -1, doc="> 0 overrides num_epochs"),
    field("optimizer", "adamw", one_of(OPTIMIZERS)),
    field("learning_rate", 3e-3, above(0), "for the global batch"),
    field("lr_schedule", "cosine", one_of(SCHEDULES)),
    field("lr_decay_rate", 0.98, in_range(0, 1, "(]"),
          "exponential: per `lr_decay_epochs`, staircase"),
    field("lr_decay_epochs", 1.0, above(0)),
    field("warmup_epochs", 2.0, at_least(0)),
    field("momentum", 0.9, in_range(0, 1), "rmsprop_tf and sgd"),
    field("nesterov", False, doc="sgd"),
    field("rmsprop_decay", 0.9, in_range(0, 1)),
    field("rmsprop_epsilon", 1.0, above(0)),
    field("adam_b1", 0.9, in_range(0, 1)),
    field("adam_b2", 0.999, in_range(0, 1)),
    field("weight_decay", 4e-5, at_least(0)),
    # Parameters whose path matches one of these regexes are not decayed.
    field("no_decay", ("bias", "bn/scale", "depthwise/conv/kernel"), REGEXES),
    field("grad_clip_norm", 0.0, at_least(0), "> 0 clips the global norm"),
    field("label_smoothing", 0.1, in_range(0, 1)),
    field("ema_decay", 0.0, in_range(0, 1),
          "> 0 keeps an EMA of the parameters for eval"),

    # Starting weights: the workdir of a run or of `python -m mobilenet_jax.tools.convert`
    # (Keras weights); a classifier of another class count is trained anew.
    field("init_from", None, type=Optional[str]),
    field("eval_only", False,
          doc="evaluate init_from's (or the workdir's) weights once"),

    # Loop, evaluation, checkpoints, logs.
    field("steps_per_call", 0, at_least(0),
          "train steps one compiled call runs (a scan; the same numbers as one "
          "at a time); 0: 4 on CPU, 1 on GPU and TPU (parallel.steps_per_call)"),
    positive_int("log_every_steps", 50),
    positive_int("eval_every_steps", 500, "also at the end"),
    positive_int("checkpoint_every_steps", 500),
    positive_int("keep_checkpoints", 2),
)
KEYS = tuple(f.key for f in FIELDS)


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  for f in FIELDS:
    config[f.key] = f.initial()
  return config


def validate_model(model):
  """The model section: its keys and their types here, the values by
  building the module (its __post_init__ checks them)."""
  if not hasattr(model, "keys"):
    raise not_valid("model", model, "a model section, e.g. "
                     "defaults.model_config('mobilenet_v2')")
  knobs = models.knobs(model.get("name"))  # checks the name
  check_keys(model.keys(), ("name",) + tuple(f.name for f in knobs), "model")
  for f in knobs:
    if f.name in model and not conforms(model[f.name], f.type):
      raise not_valid(f"model.{f.name}", model[f.name], noun(f.type))
  models.get_model(model)


def validate(config):
  """Raises ConfigError, naming the key, the value and what is allowed, for
  the first value of `config` that its declaration does not allow."""
  check_fields(config, FIELDS)
  if config["quantization"] != "none" and config["dtype"] != "float32":
    raise not_valid("dtype", config["dtype"], "float32 with quantization="
                    f"{config['quantization']!r} (int8 is simulated in float32)")
  if config["quantization"] != "none" and config["ptq_eval"]:
    raise not_valid("ptq_eval", tuple(config["ptq_eval"]), "() with quantization="
                    f"{config['quantization']!r} (it quantizes a float run after training)")
  validate_model(config["model"])
  parallel.batch_sizes(config["batch_size"], config["per_device_batch_size"])
  parallel.batch_sizes(config["eval_batch_size"],
                       config["eval_per_device_batch_size"], "eval_batch_size")
