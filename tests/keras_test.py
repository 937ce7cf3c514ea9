"""The models against Keras Applications: parameter counts, shapes, numbers."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from mobilenet_jax.interop.keras import load_keras_weights
from mobilenet_jax.models import get_model


def keras_model(name, alpha, size, **kw):
  fn = keras.applications.MobileNet if name == "mobilenet_v1" else keras.applications.MobileNetV2
  return fn(weights=None, input_shape=(size, size, 3), alpha=alpha, **kw)


def flax_variables(model, size):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


# Unusual settings on top of the conformance rows (conformance_test.py pins those).
@pytest.mark.parametrize("name,alpha,size,classes,extra", [
    ("mobilenet_v1", 0.3, 96, 10, {}),
    ("mobilenet_v1", 1.2, 128, 7, {}),
    ("mobilenet_v1", 0.6, 64, 1000, {"depth_multiplier": 2}),
    ("mobilenet_v2", 0.6, 96, 10, {}),
    ("mobilenet_v2", 1.1, 64, 3, {}),
    ("mobilenet_v2", 0.2, 32, 1000, {}),
    ("mobilenet_v2", 1.75, 160, 5, {}),
])
def test_param_counts_equal_keras(name, alpha, size, classes, extra):
  km = keras_model(name, alpha, size, classes=classes, **extra)
  model = get_model(dict(name=name, alpha=alpha, num_classes=classes, **extra))
  variables = flax_variables(model, size)
  assert count(variables) == km.count_params()
  trainable = sum(int(np.prod(w.shape)) for w in km.trainable_weights)
  assert count(variables["params"]) == trainable


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("size", [97, 150])
def test_feature_map_shapes_equal_keras_at_odd_sizes(name, size):
  km = keras_model(name, 0.5, size, include_top=False)
  model = get_model(dict(name=name, alpha=0.5, include_top=False))
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, size, size, 3)))[0])
  assert out.shape == (2,) + tuple(km.output_shape[1:])


def randomize_bn_statistics(km, rng):
  for layer in km.layers:
    if type(layer).__name__ == "BatchNormalization":
      g, b, m, v = layer.get_weights()
      layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                         rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 1.5, v.shape)])


def keras_with_random_statistics(name, alpha, size, classes, seed):
  """A Keras model with logits out and random BN statistics, and two inputs."""
  rng = np.random.default_rng(seed)
  km = keras_model(name, alpha, size, classes=classes, classifier_activation=None)
  randomize_bn_statistics(km, rng)
  return km, rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("name,alpha,size", [
    ("mobilenet_v2", 0.35, 35),  # odd: stride-2 blocks pad 1 on both sides
    ("mobilenet_v2", 0.5, 64),   # even: pad 0 before, 1 after
    ("mobilenet_v1", 0.25, 35),
    ("mobilenet_v1", 0.5, 64),
])
def test_logits_equal_keras_with_copied_weights(name, alpha, size):
  """Same weights, same logits: stride-2 padding and layer order match Keras."""
  km, x = keras_with_random_statistics(name, alpha, size, 10, seed=0)
  model = get_model(dict(name=name, alpha=alpha, num_classes=10))
  variables = load_keras_weights(km, flax_variables(model, size))
  ours = model.apply(variables, x)
  np.testing.assert_allclose(ours, km(x, training=False), atol=1e-4, rtol=1e-4)


def test_residual_adds_where_keras_puts_them():
  km = keras_model("mobilenet_v2", 1.0, 64)
  keras_blocks = sorted(int(l.name.split("_")[1]) for l in km.layers if l.name.endswith("_add"))
  model = get_model(dict(name="mobilenet_v2"))
  _, state = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), mutable=["intermediates", "params", "batch_stats"]))
  ours = sorted(int(k.split("_")[1]) for k in state["intermediates"])
  assert ours == keras_blocks


@pytest.mark.parametrize("name,alpha,size", [
    ("mobilenet_v2", 0.35, 161),  # odd size: every stride-2 pads unevenly
    ("mobilenet_v2", 1.4, 64),
    ("mobilenet_v1", 0.25, 161),
    ("mobilenet_v1", 0.75, 64),
])
@pytest.mark.slow
def test_from_keras_gives_the_same_logits(name, alpha, size):
  from mobilenet_jax.interop.keras import from_keras
  km, x = keras_with_random_statistics(name, alpha, size, 7, seed=1)
  model, variables = from_keras(km)
  assert (model.alpha, model.num_classes) == (alpha, 7)
  diff = np.abs(np.asarray(model.apply(variables, x)) - km(x, training=False))
  assert diff.max() < 1e-4


# Keras warns once per layer it cannot match before it raises.
@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_keras_weights_file_of_another_alpha_or_model_is_a_clear_error(tmp_path):
  from mobilenet_jax.errors import ConfigError
  from mobilenet_jax.interop.keras import from_keras_file
  km = keras_model("mobilenet_v2", 0.35, 32, classes=3, classifier_activation=None)
  path = str(tmp_path / "v2_035.weights.h5")
  km.save_weights(path)
  model, variables = from_keras_file(path, "mobilenet_v2", 0.35, image_size=32,
                                     num_classes=3)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(model.apply(variables, x), km(x, training=False), atol=1e-4)
  with pytest.raises(ConfigError, match="does not fit a Keras mobilenet_v2 with alpha 0.5"):
    from_keras_file(path, "mobilenet_v2", 0.5, image_size=32, num_classes=3)
  with pytest.raises(ConfigError, match="does not fit a Keras mobilenet_v1 with alpha 0.35"):
    from_keras_file(path, "mobilenet_v1", 0.35, image_size=32, num_classes=3)
  with pytest.raises(ConfigError, match="not a Keras Applications MobileNet"):
    from mobilenet_jax.interop.keras import from_keras
    from_keras(keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3)))


# ------------------------------------ convert: Keras file -> checkpoint -> main ---

@pytest.mark.slow
def test_converted_keras_weights_evaluate_through_main_as_keras_predicts(tmp_path):
  """convert, then main's eval-only path: the same top-1 as Keras itself."""
  from configs import default
  from mobilenet_jax.data import datasets, input_pipeline
  from mobilenet_jax.training import loop
  from mobilenet_jax.interop.keras import convert_to_checkpoint
  km = keras_model("mobilenet_v2", 0.35, 32, classes=10, classifier_activation=None)
  randomize_bn_statistics(km, np.random.default_rng(2))
  km.save_weights(str(tmp_path / "v2.weights.h5"))
  config = default.get_config()
  config.model.alpha, config.depthwise_impl = 0.35, "lax"
  diff = convert_to_checkpoint(str(tmp_path / "v2.weights.h5"), config, str(tmp_path / "keras"))
  assert diff < 1e-4
  config.init_from, config.eval_only = str(tmp_path / "keras"), True
  results = loop.train_and_evaluate(config, str(tmp_path / "eval"))
  images, labels = input_pipeline.first_examples(
      config, datasets.get_builder(config), config.eval_split, 1000)
  keras_top1 = np.mean(np.argmax(km(images, training=False), -1) == labels)
  assert (results["steps"], results["eval_count"]) == (0, 360)
  assert results["eval_top1"] == pytest.approx(keras_top1, abs=1e-9)
  assert 0.05 < keras_top1 < 0.5  # random weights: a real but poor classifier


def test_convert_refuses_a_keras_model_the_config_does_not_describe(tmp_path):
  from configs import default
  from mobilenet_jax import defaults
  from mobilenet_jax.errors import ConfigError
  from mobilenet_jax.interop.keras import convert_to_checkpoint
  keras_model("mobilenet_v1", 0.25, 32, classes=10).save(str(tmp_path / "v1.keras"))
  config = default.get_config()  # a MobileNetV2
  with pytest.raises(ConfigError, match="model: 'MobileNetV1' there, 'MobileNetV2' here"):
    convert_to_checkpoint(str(tmp_path / "v1.keras"), config, str(tmp_path / "out"))
  config.model = defaults.model_config("mobilenet_v1")
  config.model.num_classes = 10
  with pytest.raises(ConfigError, match="alpha: 0.25 there, 1.0 here"):
    convert_to_checkpoint(str(tmp_path / "v1.keras"), config, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_convert_command_names_a_wrong_alpha_and_writes_nothing(tmp_path):
  import subprocess
  import sys
  from conftest import ROOT
  path = str(tmp_path / "v2_035.weights.h5")
  keras_model("mobilenet_v2", 0.35, 32, classes=10, classifier_activation=None).save_weights(path)
  proc = subprocess.run(
      [sys.executable, "-m", "mobilenet_jax.tools.convert", "--from-keras", path,
       "--config", "configs/default.py", "--out", str(tmp_path / "out")],
      cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "does not fit a Keras mobilenet_v2 with alpha 0.5" in proc.stderr.splitlines()[-1]
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", [pytest.param("mobilenet_v1", marks=pytest.mark.slow),
                                  "mobilenet_v2"])
def test_glorot_kernel_init_draws_every_kernel_at_keras_scale(name):
  """kernel_init="glorot_uniform" starts each kernel (depthwise included) at the
  scale Keras Applications initialises it; Flax's lecun_normal starts the
  depthwise kernels about 7x larger."""
  keras.utils.set_random_seed(0)
  km = keras_model(name, 0.5, 32, classes=10)
  ratios = {}
  for init in ("glorot_uniform", "lecun_normal"):
    model = get_model(dict(name=name, alpha=0.5, num_classes=10, kernel_init=init))
    ours = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    theirs = load_keras_weights(km, ours)
    flat = flax.traverse_util.flatten_dict(ours["params"], sep="/")
    flat_keras = flax.traverse_util.flatten_dict(theirs["params"], sep="/")
    ratios[init] = {path: float(np.std(w) / np.std(flat_keras[path]))
                    for path, w in flat.items() if path.endswith("kernel") and w.size >= 2000}
  assert len(ratios["glorot_uniform"]) > 10
  for path, ratio in ratios["glorot_uniform"].items():
    assert 0.9 < ratio < 1.1, path
  depthwise = [r for p, r in ratios["lecun_normal"].items() if "depthwise" in p]
  assert depthwise and min(depthwise) > 4
