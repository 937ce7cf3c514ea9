"""The default config: every field declared once, with what it allows.

The default is a small MobileNetV2 on the embedded 8x8 digits set. Config files
(configs/*.py) start from `get_config()` and change only what differs, so a
diff of two configs is the experiment. The model section is derived from the
knobs the Flax modules declare (`models.default_config`).

`validate(config)` checks every value against its declaration before any work
starts, and raises ConfigError with one line naming the key, the value and
what is allowed.
"""

import collections.abc
import numbers
import re
import types
import typing
from typing import Any, Callable, NamedTuple, Optional, Tuple, Union

import ml_collections
from ml_collections import config_dict

from mobilenet_jax import models, parallel
from mobilenet_jax.errors import ConfigError
from mobilenet_jax.models.base import MIN_IMAGE_SIZE
from mobilenet_jax.ops.batchnorm import BATCHNORM_IMPLS
from mobilenet_jax.ops.depthwise import IMPLS
from mobilenet_jax.training.optim import OPTIMIZERS, SCHEDULES

DTYPES = ("float32", "bfloat16")
TRAIN_AUGMENT = ("inception", "small", "none")
EVAL_PREPROCESS = ("center_crop", "resize")  # "center_crop" keeps 0.875


# ------------------------------------------------------------ the checks ---

class Check(NamedTuple):
  """What a field allows: `ok(value, config)`, and the words for it, where
  "{}" stands for the kind of value ("{} > 0" -> "a number > 0")."""
  ok: Callable[[Any, Any], bool]
  says: str


def _check(says: str, ok: Callable[[Any], bool]) -> Check:
  return Check(lambda value, config: ok(value), says)


ANY = _check("{}", lambda v: True)
NOT_EMPTY = _check("a non-empty string", lambda v: v != "")


def above(low) -> Check:
  return _check(f"{{}} > {low}", lambda v: v > low)


def at_least(low) -> Check:
  return _check(f"{{}} >= {low}", lambda v: v >= low)


def in_range(low, high, ends: str = "[)") -> Check:
  """low..high with open or closed ends: "[)" is low <= v < high."""
  lo = (lambda v: v >= low) if ends[0] == "[" else (lambda v: v > low)
  hi = (lambda v: v < high) if ends[1] == ")" else (lambda v: v <= high)
  return _check(f"{{}} in {ends[0]}{low}, {high}{ends[1]}",
                lambda v: lo(v) and hi(v))


def one_of(choices) -> Check:
  return _check(f"one of {', '.join(repr(c) for c in choices)}",
                lambda v: v in choices)


def _compiles(pattern) -> bool:
  try:
    re.compile(pattern)
    return True
  except re.error:
    return False


REGEXES = _check("a list of regular expressions",
                 lambda v: all(isinstance(p, str) and _compiles(p) for p in v))


def unless_steps(check: Check) -> Check:
  """`check`, waived when num_train_steps > 0 sets the length instead."""
  return Check(lambda v, c: c["num_train_steps"] > 0 or check.ok(v, c),
               check.says + " (or num_train_steps > 0)")


# ----------------------------------------------------------------- types ---

NOUNS = {bool: "True or False", int: "an integer", float: "a number",
         str: "a string"}


def _is_union(tp) -> bool:
  return typing.get_origin(tp) in (Union, types.UnionType)


def _items(tp):
  """The element type of Sequence[X] or Tuple[X, ...], else None."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin is collections.abc.Sequence or (
      origin is tuple and len(args) == 2 and args[1] is Ellipsis):
    return args[0]
  return None


def conforms(value, tp) -> bool:
  """Whether `value` has type `tp` (a field's type or a knob's annotation);
  an integer is a number, a bool is not, a list is a tuple."""
  if tp is Any:
    return True
  if tp is type(None):
    return value is None
  if _is_union(tp):
    return any(conforms(value, arm) for arm in typing.get_args(tp))
  if tp is bool:
    return isinstance(value, bool)
  if tp in (int, float):
    base = numbers.Integral if tp is int else numbers.Real
    return isinstance(value, base) and not isinstance(value, bool)
  if tp is str:
    return isinstance(value, str)
  if isinstance(tp, type):  # a plain class
    return isinstance(value, tp)
  if not isinstance(value, (list, tuple)):
    return False
  item = _items(tp)
  if item is not None:
    return all(conforms(v, item) for v in value)
  args = typing.get_args(tp)  # Tuple[A, B]: one value per position
  return len(value) == len(args) and all(map(conforms, value, args))


def noun(tp) -> str:
  """"an integer", "a string or None", "a list of (int, int) rows"..."""
  if tp in NOUNS:
    return NOUNS[tp]
  if _is_union(tp):
    arms = [noun(a) for a in typing.get_args(tp) if a is not type(None)]
    return " or ".join(arms) + " or None"
  item = _items(tp)
  if typing.get_origin(item) is tuple:
    names = ", ".join(a.__name__ for a in typing.get_args(item))
    return f"a list of ({names}) rows"
  if item is not None:
    return f"a list of {noun(item)[2:]}s" if item in NOUNS else f"a list of {item}"
  return str(tp).replace("typing.", "")


# ------------------------------------------------------------ the fields ---

class Field(NamedTuple):
  key: str
  default: Any      # a value, or a function making it (the model section)
  check: Check
  doc: str
  type: Any         # what conforms() accepts; None: the model section

  def initial(self):
    if callable(self.default):
      return self.default()
    if self.default is None:  # overridable from the command line
      return config_dict.placeholder(_placeholder_type(self.type))
    return self.default


def _placeholder_type(tp):
  """Optional[X] -> X, the type a None default can be set to."""
  arms = [a for a in typing.get_args(tp) if a is not type(None)]
  return arms[0] if arms else tp


def field(key: str, default, check: Check = ANY, doc: str = "", type=None) -> Field:
  """A config field; its type is its default's unless given (a None default
  needs one)."""
  if type is None and default is not None and not callable(default):
    type = Tuple[str, ...] if isinstance(default, tuple) else default.__class__
  return Field(key, default, check, doc, type)


def model_config(name: str) -> ml_collections.ConfigDict:
  """The model section for `name`: every knob of the module with its default."""
  fields = {f.name: f for f in models.knobs(name)}
  section = ml_collections.ConfigDict()
  for key, value in models.default_config(name).items():
    if value is None:  # overridable from the command line
      value = config_dict.placeholder(_placeholder_type(fields[key].type))
    section[key] = value
  return section


def digits_model() -> ml_collections.ConfigDict:
  model = model_config("mobilenet_v2")
  model.alpha = 0.5
  model.num_classes = 10
  model.dropout = 0.0
  # Few steps on a small set: the running statistics must converge fast
  # (with Keras' 0.999 a digits run evaluates at chance; docs/design.md).
  model.bn_momentum = 0.9
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
    field("input_workers", None, _check("None (from the CPU count) or an integer >= 0",
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

    # Starting weights: the workdir of a run or of `python -m mobilenet_jax.convert`
    # (Keras weights); a classifier of another class count is trained anew.
    field("init_from", None, type=Optional[str]),
    field("eval_only", False,
          doc="evaluate init_from's (or the workdir's) weights once"),

    # Loop, evaluation, checkpoints, logs.
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


# ------------------------------------------------------------- ImageNet ---

def imagenet_recipe(config):
  """The papers' TF-slim ImageNet recipe (docs/conformance.md)."""
  config.dataset = "imagenet2012"
  config.train_split = "train"
  config.eval_split = "validation"
  config.model.num_classes = 1000
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


def imagenet_config(name: str, arg: str) -> ml_collections.ConfigDict:
  """The default with model `name` (all its paper defaults), the ImageNet
  recipe, and the variant "alpha_size"."""
  config = get_config()
  config.model = model_config(name)
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


# ------------------------------------------------------------ validation ---

def _not_valid(key: str, value, allowed: str) -> ConfigError:
  return ConfigError(f"{key}={value!r} is not valid; use {allowed}.")


def _check_keys(keys, valid, section: str = ""):
  for key in keys:
    if key not in valid:
      where = f"config.{section}" if section else "config"
      name = f"{section}.{key}" if section else key
      raise ConfigError(f"unknown config key {name!r}; valid keys of {where}: "
                        f"{', '.join(valid)}.")


def _check_fields(config):
  """Types first, so that the cross-field checks compare numbers."""
  missing = [key for key in KEYS if key not in config]
  if missing:
    raise ConfigError(f"config lacks {', '.join(missing)}; start from "
                      "mobilenet_jax.defaults.get_config().")
  for f in FIELDS:
    if f.type is not None and not conforms(config[f.key], f.type):
      raise _not_valid(f.key, config[f.key], f.check.says.format(noun(f.type)))
  for f in FIELDS:
    if f.type is not None and not f.check.ok(config[f.key], config):
      raise _not_valid(f.key, config[f.key], f.check.says.format(noun(f.type)))


def validate_model(model):
  """The model section: its keys and their types here, the values by
  building the module (its __post_init__ checks them)."""
  if not hasattr(model, "keys"):
    raise _not_valid("model", model, "a model section, e.g. "
                     "defaults.model_config('mobilenet_v2')")
  knobs = models.knobs(model.get("name"))  # checks the name
  _check_keys(model.keys(), ("name",) + tuple(f.name for f in knobs), "model")
  for f in knobs:
    if f.name in model and not conforms(model[f.name], f.type):
      raise _not_valid(f"model.{f.name}", model[f.name], noun(f.type))
  models.get_model(model)


def validate(config):
  """Raises ConfigError, naming the key, the value and what is allowed, for
  the first value of `config` that its declaration does not allow."""
  _check_keys(config.keys(), KEYS)
  _check_fields(config)
  validate_model(config["model"])
  parallel.batch_sizes(config["batch_size"], config["per_device_batch_size"])
  parallel.batch_sizes(config["eval_batch_size"],
                       config["eval_per_device_batch_size"], "eval_batch_size")
