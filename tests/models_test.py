"""Structure of the models: bottleneck activations, shortcuts, shapes, errors."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet_jax.errors import ConfigError
from mobilenet_jax.models import get_model, model_attributes
from mobilenet_jax.models.layers import InvertedResidual


def run_block(x, zero_projection=False, prev=None, **kw):
  block = InvertedResidual(**kw)
  variables = block.init(jax.random.key(0), x, prev)
  if zero_projection:  # BN(project) == 0 leaves only what the shortcut adds
    variables = flax.core.unfreeze(variables)
    bn = variables["params"]["project"]["bn"]
    bn["scale"] = jnp.zeros_like(bn["scale"])
    bn["bias"] = jnp.zeros_like(bn["bias"])
  out, expansion, _ = block.apply(variables, x, prev)  # the depthwise output: an endpoint
  return out, expansion


X = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))


@pytest.mark.parametrize("shortcut", ["bottleneck", "expansion", "none"])
def test_linear_bottleneck_has_no_activation(shortcut):
  out, _ = run_block(X, features=24, expansion=6, shortcut=shortcut)
  assert out.min() < -0.5  # a ReLU or ReLU6 after the projection forbids this


@pytest.mark.parametrize("act,low,high", [("relu6", 0, 6), ("relu", 0, np.inf)])
def test_nonlinear_bottleneck_clips(act, low, high):
  out, _ = run_block(X * 20, features=24, expansion=6, shortcut="none",
                     bottleneck_activation=act)
  assert out.min() >= low and out.max() <= high
  assert out.max() > 0


def test_bottleneck_shortcut_adds_the_block_input():
  out, _ = run_block(X, zero_projection=True, features=16, expansion=6)
  np.testing.assert_allclose(out, X, atol=1e-6)


@pytest.mark.parametrize("features,strides", [(24, 1), (16, 2)])
def test_no_shortcut_when_shapes_differ(features, strides):
  out, _ = run_block(X, zero_projection=True, features=features,
                     expansion=6, strides=strides)
  np.testing.assert_allclose(out, 0, atol=1e-6)


def test_no_shortcut_option_removes_the_residual():
  out, _ = run_block(X, zero_projection=True, features=16, expansion=6,
                     shortcut="none")
  np.testing.assert_allclose(out, 0, atol=1e-6)


def test_expansion_shortcut_adds_the_previous_expansion():
  _, plain = run_block(X, features=16, expansion=6, shortcut="none")
  prev = jax.random.normal(jax.random.key(2), plain.shape)
  _, expansion = run_block(X, prev=prev, features=16, expansion=6,
                           shortcut="expansion")
  np.testing.assert_allclose(expansion, plain + prev, atol=1e-5)


def shortcut_blocks(model_config, size=64):
  model = get_model(model_config)
  _, state = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, size, size, 3)),
      mutable=["params", "batch_stats", "intermediates"]))
  found = state.get("intermediates", {})
  return {int(k.split("_")[1]): list(v) for k, v in found.items()}


def test_shortcut_placement_across_the_network():
  # Keras' block_{2,4,5,7,8,9,11,12,14,15}_add: stride 1, equal channels.
  bottleneck = [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]
  found = shortcut_blocks(dict(name="mobilenet_v2"))
  assert sorted(found) == bottleneck
  assert all(v == ["bottleneck_shortcut"] for v in found.values())
  # Between expansions: the expansion of block i+1 gets the one of block i
  # exactly where block i keeps its shape.
  found = shortcut_blocks(dict(name="mobilenet_v2", shortcut="expansion"))
  assert sorted(found) == [i + 1 for i in bottleneck]
  assert all(v == ["expansion_shortcut"] for v in found.values())
  assert shortcut_blocks(dict(name="mobilenet_v2", shortcut="none")) == {}


def test_first_block_has_no_expansion_layer():
  variables = jax.eval_shape(lambda: get_model(dict(name="mobilenet_v2")).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  assert "expand" not in variables["params"]["block_0"]
  assert "expand" in variables["params"]["block_1"]


def test_expansion_override_changes_every_expanding_block():
  variables = jax.eval_shape(lambda: get_model(dict(
      name="mobilenet_v2", expansion=3.0)).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  kernel = variables["params"]["block_1"]["expand"]["conv"]["kernel"]
  assert kernel.shape == (1, 1, 16, 48)
  assert "expand" not in variables["params"]["block_0"]


def test_v1_variants_drop_or_replace_layers():
  def params(**kw):
    return jax.eval_shape(lambda: get_model(dict(name="mobilenet_v1", **kw)).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]
  assert [f"block_{i}" in params(shallow=True) for i in range(6, 13)] == [
      True, False, False, False, False, False, True]
  full = params(conv_type="full")["block_2"]
  assert set(full) == {"conv"} and full["conv"]["conv"]["kernel"].shape == (3, 3, 64, 128)
  dm = params(depth_multiplier=2)["block_1"]
  assert dm["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 64)
  assert dm["pointwise"]["conv"]["kernel"].shape == (1, 1, 64, 64)


@pytest.mark.parametrize("model_config", [
    dict(name="mobilenet_v1", blocks=((64, 1), (128, 2))),
    dict(name="mobilenet_v2", blocks=((1, 16, 1, 1), (6, 24, 2, 2))),
])
def test_train_mode_updates_batch_stats_and_uses_dropout(model_config):
  model = get_model(dict(model_config, alpha=0.25, num_classes=5, dropout=0.5))
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
  logits, updates = apply(variables, x, rngs={"dropout": jax.random.key(2)})
  assert logits.shape == (4, 5)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("model_config,words", [
    (dict(name="mobilenet_v2", alpha=0.0), ["model.alpha", "> 0"]),
    (dict(name="mobilenet_v1", alpha=-0.5), ["model.alpha", "> 0"]),
    (dict(name="mobilenet_v2", bottleneck_activation="gelu"),
     ["model.bottleneck_activation", "'linear'", "'relu6'", "'relu'"]),
    (dict(name="mobilenet_v2", shortcut="dense"), ["model.shortcut", "'expansion'"]),
    (dict(name="mobilenet_v1", conv_type="grouped"), ["model.conv_type", "'full'"]),
    (dict(name="mobilenet_v3"), ["model.name", "'mobilenet_v1'", "'mobilenet_v2'"]),
    (dict(name="mobilenet_v1", expansion=6), ["model.expansion", "depth_multiplier"]),
    (dict(name="mobilenet_v2", expansion=0.5), ["model.expansion", ">= 1"]),
    (dict(name="mobilenet_v1", kernel_init="he_normal"),
     ["model.kernel_init", "'lecun_normal'", "'glorot_uniform'"]),
])
def test_bad_knobs_name_the_key_and_the_valid_values(model_config, words):
  with pytest.raises(ConfigError) as e:
    get_model(model_config)
  for word in words:
    assert word in str(e.value)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_too_small_image_is_a_config_error(name):
  model = get_model(dict(name=name))
  with pytest.raises(ConfigError, match="image_size=31.*>= 32"):
    model.init(jax.random.key(0), jnp.zeros((1, 31, 31, 3)))


def test_registry_lists_attributes():
  assert "bottleneck_activation" in model_attributes("mobilenet_v2")
  assert "conv_type" in model_attributes("mobilenet_v1")
