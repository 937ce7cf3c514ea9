"""defaults.validate: every bad value is one ConfigError naming the key, the
value and what is allowed, before any work starts; the model section is the
models' own declaration."""

import dataclasses
import os
import re
import runpy
import subprocess
import sys

import ml_collections
import pytest

from conftest import ROOT
from mobilenet_jax import defaults, models
from mobilenet_jax.tools import ablate
from mobilenet_jax.errors import ConfigError

# Values that used to crash late with a traceback or were silently accepted.
BATTERY = [
    ("per_device_batch_size", 0), ("log_every_steps", 0),
    ("checkpoint_every_steps", 0), ("eval_every_steps", 0),
    ("eval_per_device_batch_size", 0), ("label_smoothing", 2.0),
    ("ema_decay", 1.5), ("warmup_epochs", -1.0), ("weight_decay", -1.0),
    ("learning_rate", -0.1),
]
RELATIVES = [
    ("num_epochs", 0.0), ("num_epochs", -5.0), ("keep_checkpoints", 0),
    ("input_workers", -1), ("image_size", 31), ("momentum", 1.0),
    ("momentum", -0.1), ("grad_clip_norm", -1.0), ("lr_decay_rate", 0.0),
    ("lr_decay_rate", 1.5), ("lr_decay_epochs", 0.0), ("rmsprop_decay", 1.0),
    ("rmsprop_epsilon", 0.0), ("adam_b1", 1.0), ("adam_b2", -0.5),
    ("label_smoothing", -0.1), ("seed", -1), ("dataset", ""),
    ("eval_split", ""), ("no_decay", ("bias", "(")),
    # Choices.
    ("optimizer", "adagrad"), ("lr_schedule", "step"), ("dtype", "float16"),
    ("depthwise_impl", "fast"), ("batchnorm_impl", "cudnn"), ("train_augment", "autoaugment"),
    ("eval_preprocess", "crop"),
]
# Wrong types, which a ConfigDict built from a dict (a sweep's, a hand-made
# one) does not stop.
WRONG_TYPES = [
    ("learning_rate", "fast"), ("num_train_steps", 1.5), ("num_epochs", True),
    ("per_device_batch_size", 8.0), ("sync_bn", "yes"), ("random_flip", 1),
    ("dataset", 3), ("data_dir", 3), ("no_decay", "bias"), ("optimizer", None),
]
MODEL_BATTERY = [
    ("alpha", 0.0), ("alpha", "big"), ("num_classes", -1), ("num_classes", 2.5),
    ("output_stride", 4), ("output_stride", 24), ("min_depth", 0), ("min_depth", -8),
    ("divisible_by", 0), ("padding", "valid"), ("pooling", "sum"),
    ("freeze_bn", "layer_99"), ("freeze_bn", "Conv2d_3_pointwise"),
    ("dropout", 1.0), ("bn_momentum", 1.0), ("bn_epsilon", 0.0),
    ("include_top", "no"), ("expansion", 0.5), ("expansion", "six"),
    ("bottleneck_activation", "gelu"), ("shortcut", "dense"),
    ("blocks", ((1, 16, 1),)), ("blocks", 7), ("name", "resnet"),
]


def with_value(key, value, config=None):
  """The default config with config[key] = value, any type allowed."""
  tree = (config or defaults.get_config()).to_dict()
  node = tree
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  return ml_collections.ConfigDict(tree)


def assert_names(error, key, value):
  message = str(error.value)
  assert len(message.splitlines()) == 1, message
  assert f"{key}={value!r}" in message, message


@pytest.mark.parametrize("key,value", BATTERY + RELATIVES + WRONG_TYPES)
def test_bad_value_is_one_line_naming_key_and_value(key, value):
  with pytest.raises(ConfigError) as e:
    defaults.validate(with_value(key, value))
  assert_names(e, key, value)


@pytest.mark.parametrize("key,value", MODEL_BATTERY)
def test_bad_model_knob_is_one_line_naming_key_and_value(key, value):
  with pytest.raises(ConfigError) as e:
    defaults.validate(with_value(f"model.{key}", value))
  assert_names(e, f"model.{key}", value)


@pytest.mark.parametrize("key,value,allowed", [
    ("learning_rate", -0.1, "a number > 0"),
    ("learning_rate", "fast", "a number > 0"),
    ("per_device_batch_size", 0, "an integer >= 1"),
    ("ema_decay", 1.5, "a number in [0, 1)"),
    ("lr_decay_rate", 0.0, "a number in (0, 1]"),
    ("image_size", 16, "an integer >= 32"),
    ("optimizer", "adagrad", "one of 'rmsprop_tf', 'sgd', 'adamw'"),
    ("num_epochs", 0.0, "a number > 0 (or num_train_steps > 0)"),
    ("sync_bn", "yes", "True or False"),
    ("data_dir", 3, "a string or None"),
    ("model.blocks", ((1, 16, 1),), "a list of (float, int, int, int) rows"),
])
def test_message_says_what_is_allowed(key, value, allowed):
  with pytest.raises(ConfigError, match="is not valid; use " + re.escape(allowed)):
    defaults.validate(with_value(key, value))


def test_epochs_may_be_zero_when_steps_set_the_length():
  config = defaults.get_config()
  config.num_epochs, config.num_train_steps = 0.0, 10
  defaults.validate(config)


def test_batch_sizes_must_divide_over_the_devices():
  config = defaults.get_config()
  config.batch_size = 8  # 4 fake devices (conftest)
  defaults.validate(config)
  for key in ("batch_size", "eval_batch_size"):
    with pytest.raises(ConfigError, match=f"{key}=6 does not divide over 4 devices"):
      defaults.validate(with_value(key, 6))


def test_unknown_and_missing_keys_are_named():
  with pytest.raises(ConfigError, match="unknown config key 'epochs'; valid keys"):
    defaults.validate(with_value("epochs", 5))
  with pytest.raises(ConfigError, match="unknown config key 'model.width'.*alpha"):
    defaults.validate(with_value("model.width", 0.5))
  # Implementation attributes come from the top level (dtype, depthwise_impl).
  with pytest.raises(ConfigError, match="unknown config key 'model.dtype'"):
    defaults.validate(with_value("model.dtype", "bfloat16"))
  tree = defaults.get_config().to_dict()
  del tree["ema_decay"]
  with pytest.raises(ConfigError, match="config lacks ema_decay"):
    defaults.validate(ml_collections.ConfigDict(tree))


def config_files():
  """(file, variant) of every shipped config and a few ImageNet variants."""
  return [("default.py", None), ("mobilenet_v1.py", None), ("mobilenet_v2.py", None),
          ("mobilenet_v1.py", "0.25_128"), ("mobilenet_v2.py", "0.35_160"),
          ("mobilenet_v2.py", "1.4_224")]


@pytest.mark.parametrize("filename,variant", config_files())
def test_shipped_configs_are_valid(filename, variant):
  get_config = runpy.run_path(os.path.join(ROOT, "configs", filename))["get_config"]
  defaults.validate(get_config(variant) if variant else get_config())


def test_every_declared_default_passes_its_own_check():
  config = defaults.get_config()
  assert set(config.keys()) == set(defaults.KEYS)
  defaults.validate(config)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_section_is_the_models_declaration(name):
  assert defaults.model_config(name).to_dict() == models.default_config(name)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_by_name_alone_equals_model_from_its_config_section(name):
  by_name = models.get_model({"name": name})
  from_config = models.get_model(defaults.model_config(name))
  assert by_name == from_config
  fields = [f.name for f in dataclasses.fields(by_name) if f.name not in ("parent", "name")]
  assert {f: getattr(by_name, f) for f in fields} == {f: getattr(from_config, f) for f in fields}


def test_none_defaults_can_be_set():
  """A knob whose default is None is a typed placeholder: settable from the
  command line and checked."""
  model = defaults.model_config("mobilenet_v2")
  model.expansion = 4  # an int where a float belongs: ConfigDict converts
  assert model.expansion == 4.0
  config = defaults.get_config()
  config.model = model
  config.data_dir = "/data/tfds"
  defaults.validate(config)
  with pytest.raises(TypeError):
    model.expansion = "six"


def test_a_sweep_is_validated_before_its_first_run():
  sweep = dict(name="toy", question="?", base=defaults.get_config(), seeds=[0, 1],
               variants={"good": {"model.alpha": 0.25},
                         "bad": {"learning_rate": -0.1}})
  with pytest.raises(ConfigError,
                     match=r"^variant 'bad': learning_rate=-0.1 is not valid"):
    ablate.expand(sweep)


# ----------------------------------------------------- the command line ---

def train(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "mobilenet_jax.main", *args],
                        cwd=cwd, capture_output=True, text=True)


def assert_one_error_line(proc, key, value, workdir):
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  last = [l for l in proc.stderr.splitlines() if l.strip()][-1]
  assert last.startswith("error:") and f"{key}={value!r}" in last, last
  assert not os.path.exists(workdir)


# One process per value: 5-7 s each alone, 12-16 s beside other tests, almost
# all of it imports (the error comes before the mesh, the data or the
# workdir). One test, so a parallel run spends one worker on them.
@pytest.mark.slow
def test_command_line_stops_with_one_line_before_writing(tmp_path):
  for key, value in BATTERY:
    workdir = str(tmp_path / key)
    proc = train("--config", "configs/default.py", "--workdir", workdir,
                 f"--config.{key}={value}", "--config.num_train_steps=3")
    assert_one_error_line(proc, key, value, workdir)


@pytest.mark.slow
def test_imagenet_config_loads_from_any_directory(tmp_path):
  """Config files import only the installed package, not the checkout."""
  workdir = str(tmp_path / "w")
  proc = train("--config", os.path.join(ROOT, "configs", "mobilenet_v2.py") + ":0.35_160",
               "--workdir", workdir, "--config.ema_decay=1.5", cwd=str(tmp_path))
  assert_one_error_line(proc, "ema_decay", 1.5, workdir)
