"""Run identity (training/run.py): what resume, init_from, convert and export agree on."""

import pytest

from mobilenet_jax import defaults, models
from mobilenet_jax.errors import ConfigError
from mobilenet_jax.models import get_model
from mobilenet_jax.training import run


def v2_config():
  config = defaults.get_config()
  config.model = defaults.model_config("mobilenet_v2")
  return config


def test_identity_names_every_knob_and_the_image_size():
  config = v2_config()
  ident = run.identity(config)
  knobs = {f.name for f in models.knobs("mobilenet_v2")}
  assert set(ident) == {f"model.{k}" for k in knobs | {"name"}} | {"image_size"}
  assert ident["model.blocks"][0] == [1, 16, 1, 1]  # as JSON stores it


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_a_model_section_by_name_alone_has_the_identity_of_the_full_one(name):
  config = v2_config()
  config.model = defaults.model_config(name)
  short = v2_config()
  short.model = {"name": name}
  assert run.identity(short) == run.identity(config)


@pytest.mark.parametrize("key,value", [("num_epochs", 3.0), ("learning_rate", 0.1),
                                       ("eval_every_steps", 7), ("log_every_steps", 3)])
def test_resume_accepts_changes_outside_the_identity(key, value):
  meta = run.new_meta(v2_config())
  config = v2_config()
  config[key] = value
  run.check_resumable(meta, config, "w")


@pytest.mark.parametrize("key,value", [("model.dropout", 0.5), ("model.alpha", 0.75),
                                       ("model.bn_momentum", 0.9), ("image_size", 64)])
def test_resume_refuses_another_identity_naming_the_knob(key, value):
  meta = run.new_meta(v2_config())
  config = v2_config()
  if key.startswith("model."):
    config.model[key[len("model."):]] = value
  else:
    config[key] = value
  with pytest.raises(ConfigError, match=f"different model .*{key}: "):
    run.check_resumable(meta, config, "w")


def test_converted_weights_are_never_resumed():
  meta = run.weights_meta(v2_config(), source="file.keras")
  with pytest.raises(ConfigError, match="converted weights"):
    run.check_resumable(meta, v2_config(), "w")


def test_same_architecture_ignores_training_knobs_only():
  base = dict(name="mobilenet_v2", alpha=0.5)
  run.check_same_architecture(get_model(base), get_model(dict(base, dropout=0.5,
                                                               bn_momentum=0.9)), "f")
  for change in (dict(alpha=0.75), dict(bottleneck_activation="relu6"),
                 dict(expansion=4.0), dict(num_classes=7)):
    key = next(iter(change))
    with pytest.raises(ConfigError, match=f"{key}: "):
      run.check_same_architecture(get_model(base), get_model(dict(base, **change)), "f")
  with pytest.raises(ConfigError, match="'MobileNetV1' there, 'MobileNetV2' here"):
    run.check_same_architecture(get_model({"name": "mobilenet_v1"}), get_model(base), "f")


def test_export_rebuilds_the_saved_architecture_from_meta():
  config = v2_config()
  config.model.update(alpha=0.35, shortcut="expansion", expansion=4.0)
  config.image_size = 96
  meta = run.as_json(run.new_meta(config))  # what orbax's JSON gives back
  rebuilt = get_model(run.model_config(meta))
  assert models.architecture(rebuilt) == models.architecture(get_model(config.model))
  assert run.image_size(meta) == 96
  assert run.identity(config) == meta["identity"]
