"""Backbone features: output stride, endpoints, pooling, widths, frozen batch norm.

TF-slim's own shape expectations are pinned in backbone_shapes_test.py; these
check the behaviour around them.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mobilenet_jax import defaults, madds, parallel
from mobilenet_jax.errors import ConfigError
from mobilenet_jax.models import get_model
from mobilenet_jax.models.base import stride_plan
from mobilenet_jax.training import optim, steps


def init(model, size=64):
  return model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))


init = jax.jit(init, static_argnums=(0, 1))  # models are hashable


def shapes(tree):
  return jax.tree.map(lambda x: x.shape, tree)


def test_stride_plan_is_slims_rule():
  # V1's strides: the stem, then its 13 blocks. At output stride 16 the stride-2
  # block 12 runs at stride 1 and rate 1, and only block 13 is dilated.
  strides = [2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
  assert stride_plan(strides, 32) == [(s, 1) for s in strides]
  assert stride_plan(strides, 16)[-2:] == [(1, 1), (1, 2)]
  # At 8: block 6 runs at stride 1, rate 1; blocks 7-12 at rate 2; block 13 at 4.
  assert stride_plan(strides, 8)[5:] == [(1, 1), (1, 1)] + [(1, 2)] * 6 + [(1, 4)]


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_output_stride_keeps_every_parameter(name):
  """A checkpoint at output stride 32 loads at 8: same variables, same shapes."""
  base = dict(name=name, alpha=0.35, num_classes=5)
  at_32 = jax.eval_shape(lambda: init(get_model(base)))
  at_8 = jax.eval_shape(lambda: init(get_model(dict(base, output_stride=8))))
  assert shapes(at_32) == shapes(at_8)


@pytest.mark.slow
@pytest.mark.parametrize("name,os,size", [("mobilenet_v2", 16, 96), ("mobilenet_v1", 8, 64)])
def test_dilated_network_is_the_same_on_every_depthwise_path(name, os, size):
  """The native kernel and the shifted form against XLA's dilated convolution,
  whole network, forward in training mode."""
  config = dict(name=name, alpha=0.35, num_classes=5, output_stride=os, dropout=0.0)
  x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  variables = init(get_model(dict(config, depthwise_impl="lax")), size)
  outs = {impl: get_model(dict(config, depthwise_impl=impl)).apply(
      variables, x, train=True, mutable=["batch_stats"])[0]
          for impl in ("lax", "native", "shift")}
  np.testing.assert_allclose(outs["native"], outs["lax"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(outs["shift"], outs["lax"], rtol=1e-4, atol=1e-4)


def test_madds_follow_the_feature_maps():
  v2 = lambda os: madds.count(dict(name="mobilenet_v2", output_stride=os), 224)["madds"]
  assert v2(32) < v2(16) < v2(8)
  layers = madds.layers(dict(name="mobilenet_v2", output_stride=16, include_top=False), 224)
  assert layers[-1].output_shape[:2] == (14, 14)  # the head, 1x1 conv at 14x14
  counted = madds.count(dict(name="mobilenet_v2", output_stride=16), 224)
  assert counted["params"] == madds.count(dict(name="mobilenet_v2"), 224)["params"]


def test_stage_endpoints_are_the_last_block_of_each_reduction():
  """timm's features_only levels (timm_features_test.py): V2's head conv
  (layer_19) is not one; its last bottleneck (layer_18) is."""
  model = get_model(dict(name="mobilenet_v2", include_top=False))
  assert model.stage_endpoints() == ["layer_2", "layer_4", "layer_7", "layer_14", "layer_18"]
  assert model.stage_endpoints((1, 4)) == ["layer_4", "layer_18"]
  v1 = get_model(dict(name="mobilenet_v1", include_top=False))
  assert v1.stage_endpoints((2, 3)) == ["Conv2d_5_pointwise", "Conv2d_11_pointwise"]
  with pytest.raises(ConfigError, match="stages are 0..4"):
    model.stage_endpoints((5,))
  variables = jax.eval_shape(lambda: init(model, 96))
  ends = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 96, 96, 3)), endpoints=True),
                        variables)
  sizes = [ends[n].shape[1] for n in model.stage_endpoints()]
  assert sizes == [48, 24, 12, 6, 3]
  assert [ends[n].shape[3] for n in model.stage_endpoints()] == [16, 24, 32, 96, 320]
  assert ends["layer_15/expansion_output"].shape == (1, 6, 6, 576)  # SSDLite's tap
  assert ends["layer_19"].shape == (1, 3, 3, 1280)  # the head conv, SSDLite's other one


def test_slims_layer_k_output_names_the_block_output():
  """TF-slim's end_points hold layer_k/output (the tf.identity ending each
  expanded_conv) beside layer_k: the same tensor, accepted wherever a name is."""
  model = get_model(dict(SMALL_V2, include_top=False))
  x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
  ends = jax.jit(functools.partial(model.apply, endpoints=True))(init(model), x)
  blocks = [f"layer_{k}" for k in range(2, 7)]
  assert sorted(n for n in ends if n.endswith("/output") and "_output" not in n) == \
      sorted(f"{n}/output" for n in blocks)
  for n in blocks:
    np.testing.assert_array_equal(ends[f"{n}/output"], ends[n])
  assert "layer_1/output" not in ends and "layer_7/output" not in ends  # convs, not blocks
  assert (get_model(dict(SMALL_V2, freeze_bn="layer_3/output")).frozen_bn_paths()
          == get_model(dict(SMALL_V2, freeze_bn="layer_3")).frozen_bn_paths())
  with pytest.raises(ConfigError, match="or TF-slim's layer_k/output"):
    get_model(dict(SMALL_V2, freeze_bn="layer_1/output"))


SMALL_V2 = dict(name="mobilenet_v2", alpha=0.35, depthwise_impl="lax",
                blocks=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)))  # fast to compile


@pytest.mark.parametrize("pooling,shape", [(None, (2, 8, 8, 1280)), ("avg", (2, 1280)),
                                           ("max", (2, 1280))])
def test_pooling_without_top(pooling, shape):
  model = get_model(dict(SMALL_V2, include_top=False, pooling=pooling))
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  variables = init(model)
  out = jax.jit(model.apply)(variables, x)
  assert out.shape == shape
  plain = get_model(dict(SMALL_V2, include_top=False))
  features = jax.jit(plain.apply)(variables, x)
  if pooling:
    reduce = jnp.max if pooling == "max" else jnp.mean
    np.testing.assert_allclose(out, reduce(features, axis=(1, 2)), rtol=1e-6)


def test_num_classes_zero_returns_the_pooled_pre_logits():
  model = get_model(dict(name="mobilenet_v1", alpha=0.25, num_classes=0, depthwise_impl="lax",
                         blocks=((64, 1), (128, 2), (256, 2))))
  variables = init(model)
  assert "classifier" not in variables["params"]
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  out = jax.jit(model.apply)(variables, x)
  plain = get_model(dict(name="mobilenet_v1", alpha=0.25, include_top=False,
                         depthwise_impl="lax", blocks=((64, 1), (128, 2), (256, 2))))
  features = jax.jit(plain.apply)(variables, x)
  np.testing.assert_allclose(out, features.mean(axis=(1, 2)), rtol=1e-6)
  assert madds.count(dict(name="mobilenet_v1", alpha=0.25, num_classes=0,
                          blocks=((64, 1), (128, 2), (256, 2))), 64)["params"] == \
      sum(x.size for x in jax.tree.leaves(variables))


def test_width_knobs():
  def head(**kw):
    layers = madds.layers(dict(name="mobilenet_v2", include_top=False, **kw), 224)
    return layers[-1].output_shape[2]
  assert head(alpha=0.5) == 1280  # Keras, finegrain mode
  assert head(alpha=0.5, finegrain_classification_mode=False) == 640  # TF-slim's default
  v1 = madds.layers(dict(name="mobilenet_v1", alpha=0.1, min_depth=16, include_top=False), 224)
  assert v1[0].output_shape[2] == 16  # the stem: int(32 * 0.1) = 3, floored at 16
  assert min(l.output_shape[2] for l in v1) == 16


def test_keras_and_slim_padding_differ_only_at_odd_sizes():
  def last(padding, size):
    return madds.layers(dict(name="mobilenet_v1", padding=padding, include_top=False),
                        size)[-1].output_shape[:2]
  assert last("keras", 224) == last("same", 224) == (7, 7)
  assert (last("keras", 225), last("same", 225)) == ((7, 7), (8, 8))


# --------------------------------------------------------- frozen batch norm ---

def small_config(freeze_bn):
  config = defaults.get_config()
  config.model.update(alpha=0.25, blocks=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)),
                      freeze_bn=freeze_bn)
  config.update(depthwise_impl="lax", label_smoothing=0.0)
  return config


def train_steps(config, n=3):
  """(state before, state after n steps) with the configured optimizer."""
  model, eval_model = steps.config_models(config)
  tx, _ = optim.create_optimizer(config, 10, 100, frozen_bn=model.frozen_bn_paths())
  mesh = parallel.create_mesh(jax.devices())
  start = steps.create_train_state(eval_model, 32, tx, jax.random.key(0), ema=False)
  step = parallel.data_parallel(functools.partial(
      steps.train_step, model=model, tx=tx, label_smoothing=0.0, ema_decay=0.0), mesh)
  rng = np.random.default_rng(0)
  state = parallel.replicate(start, mesh)
  for _ in range(n):
    batch = {"image": rng.standard_normal((8, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, 10, 8)}
    state, _ = step(state, parallel.shard_batch(batch, mesh))
  return jax.device_get(start), jax.device_get(state)


def flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


@pytest.mark.parametrize("freeze_bn,frozen_prefixes", [
    ("layer_3", ("stem/", "block_0/", "block_1/")),
    ("layer_4/expansion_output", ("stem/", "block_0/", "block_1/", "block_2/expand/")),
    ("all", ("",)),
])
def test_frozen_batch_norm_does_not_move_and_the_rest_does(freeze_bn, frozen_prefixes):
  before, after = train_steps(small_config(freeze_bn))
  moved, kept = set(), set()
  for collection in ("params", "batch_stats"):
    old, new = flat(getattr(before, collection)), flat(getattr(after, collection))
    for path in old:
      (kept if np.array_equal(old[path], new[path]) else moved).add(f"{collection}/{path}")
  frozen_bn = {p for p in kept | moved if "/bn/" in p and
               p.split("/", 1)[1].startswith(frozen_prefixes)}
  assert frozen_bn and frozen_bn <= kept  # bit-identical: scale, bias, mean, var
  assert {p for p in moved if "/bn/" in p} == {p for p in kept | moved
                                               if "/bn/" in p} - frozen_bn
  assert any("conv/kernel" in p and p.split("/", 1)[1].startswith("stem/") for p in moved)


def test_unknown_endpoint_to_freeze_names_the_valid_ones():
  with pytest.raises(ConfigError, match="model.freeze_bn='layer_42'.*layer_1, "):
    get_model(dict(name="mobilenet_v2", freeze_bn="layer_42"))


@pytest.mark.slow
def test_fine_tuning_with_frozen_bn_from_a_checkpoint(tmp_path, small_config_file):
  """The README's recipe: a run, then a new run from its weights with batch norm
  frozen up to layer_3; the frozen layers' BN leaves the second run as it came."""
  from train_test import main  # the real command line, one CPU device
  from mobilenet_jax.training import checkpoint
  steps_flag = "--config.num_train_steps=3"
  code, err = main(tmp_path / "source", small_config_file, steps_flag)
  assert code == 0, err[-2000:]
  code, err = main(tmp_path / "tuned", small_config_file, steps_flag,
                   f"--config.init_from={tmp_path / 'source'}",
                   "--config.model.freeze_bn=layer_3")
  assert code == 0, err[-2000:]
  assert (tmp_path / "tuned" / "results.json").exists()
  source = checkpoint.restore_on_one_device(str(tmp_path / "source"))[0]
  tuned = checkpoint.restore_on_one_device(str(tmp_path / "tuned"))[0]
  for collection in ("params", "batch_stats"):
    old, new = flat(source[collection]), flat(tuned[collection])
    for path in old:
      if "/bn/" in path and path.startswith(("stem/", "block_0/", "block_1/")):
        np.testing.assert_array_equal(old[path], new[path], err_msg=path)
  assert not np.array_equal(flat(source["params"])["block_2/project/bn/scale"],
                            flat(tuned["params"])["block_2/project/bn/scale"])
