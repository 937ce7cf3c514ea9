"""int8 simulation (ops/quantize.py): weight scales, rounding, gradients, the
folded conv + BN, and the quantized networks' variables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("qwix")

from mobilenet_jax import defaults
from mobilenet_jax.errors import ConfigError
from mobilenet_jax.ops import quantize
from mobilenet_jax.ops.quantize import Quantization
from mobilenet_jax.training import checkpoint, steps


def kernel(seed=0, shape=(3, 3, 4, 6)):
  w = jax.random.normal(jax.random.key(seed), shape)
  return w * jnp.arange(1, shape[-1] + 1)  # channels of different ranges


def test_per_channel_scales_follow_each_channel_and_per_tensor_one():
  w = kernel()
  per_channel = quantize.weight_scale(w, "per_channel")
  per_tensor = quantize.weight_scale(w, "per_tensor")
  assert per_channel.shape == (1, 1, 1, 6) and per_tensor.shape == (1, 1, 1, 1)
  # TFLite's: absmax / 127, per output channel or over the tensor.
  np.testing.assert_allclose(per_channel.ravel(), np.abs(w).max(axis=(0, 1, 2)) / 127,
                             rtol=1e-6)
  np.testing.assert_allclose(per_tensor.ravel(), [np.abs(w).max() / 127], rtol=1e-6)
  assert len(np.unique(np.asarray(per_channel))) == 6  # channels of different ranges


@pytest.mark.parametrize("weights", quantize.WEIGHTS)
def test_weights_land_on_the_int8_grid_and_pass_the_gradient(weights):
  w = kernel()
  q = quantize.fake_quant_weights(w, weights)
  steps_ = np.asarray(q / quantize.weight_scale(w, weights))
  np.testing.assert_allclose(steps_, np.round(steps_), atol=1e-4)
  assert np.abs(np.round(steps_)).max() == 127  # narrow range, the extreme reached
  assert 0 < np.abs(np.asarray(q - w)).max() <= np.asarray(
      quantize.weight_scale(w, weights)).max() / 2 + 1e-6
  grad = jax.grad(lambda w: jnp.sum(quantize.fake_quant_weights(w, weights) * 3.0))(w)
  np.testing.assert_array_equal(grad, np.full(w.shape, 3.0))  # straight through


def test_per_tensor_rounds_thin_channels_coarser():
  """The depthwise weakness Krishnamoorthi (2018) reports: with one scale per
  tensor, a channel of small weights loses most of its precision."""
  w = kernel()
  error = {m: np.abs(np.asarray(quantize.fake_quant_weights(w, m) - w))[..., 0].max()
           for m in quantize.WEIGHTS}
  assert error["per_tensor"] > 4 * error["per_channel"]


def test_activations_use_the_range_and_stop_the_gradient_outside():
  x = jnp.linspace(-2.03, 8.03, 101)  # no point on the range's ends
  q = quantize.fake_quant_activations(x, 0.0, 6.0)  # ReLU6's range
  scale = 6.0 / 255
  np.testing.assert_allclose(np.asarray(q) / scale, np.round(np.asarray(q) / scale), atol=1e-3)
  assert float(q.min()) == 0.0 and abs(float(q.max()) - 6.0) < scale
  grad = jax.grad(lambda x: jnp.sum(quantize.fake_quant_activations(x, 0.0, 6.0)))(x)
  inside = (x > 0) & (x < 6)
  np.testing.assert_array_equal(np.asarray(grad), inside.astype(np.float32))


def model_and_variables(quantization, activation="relu6", bottleneck="linear"):
  config = defaults.get_config()
  config.model.activation = activation
  config.model.bottleneck_activation = bottleneck
  model = steps.create_model(config.model, quantization=quantization)
  params, stats = steps.initialize(model, 32, jax.random.key(0))
  return model, params, stats


def images(n=16, seed=1):
  return jax.random.uniform(jax.random.key(seed), (n, 32, 32, 3), minval=-1, maxval=1)


def train_once(model, params, stats):
  """One training-mode pass: batch norm and activation ranges move."""
  _, updates = model.apply({"params": params, "batch_stats": stats}, images(), train=True,
                           mutable=["batch_stats"])
  return updates["batch_stats"]


def test_quantized_network_keeps_the_float_variables_and_adds_ranges():
  _, float_params, float_stats = model_and_variables(None)
  _, params, stats = model_and_variables(Quantization())
  assert jax.tree.structure(params) == jax.tree.structure(float_params)
  flat = jax.tree_util.tree_flatten_with_path(stats)[0]
  paths = ["/".join(k.key for k in p) for p, _ in flat]
  ranges = [p for p in paths if quantize.is_range(p)]
  assert sorted(set(paths) - set(ranges)) == sorted(
      "/".join(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(float_stats)[0])
  # ReLU6 outputs have the fixed range [0, 6]; the rest keep one each.
  assert "block_2/add_quant/min" in ranges and "block_1/add_quant/min" not in ranges and "input_quant/max" in ranges
  assert "classifier/quant/min" in ranges and "pool_quant/count" in ranges
  assert not any(p.startswith("block_1/expand/quant") for p in ranges)
  assert "block_1/project/quant/min" in ranges  # the linear bottleneck


def test_folded_eval_is_float_eval_up_to_rounding():
  """With weights alone quantized, evaluation is the float network's up to
  the rounding of the folded kernels: logits close, far from equal."""
  float_model, params, float_stats = model_and_variables(None)
  stats = train_once(float_model, params, float_stats)
  q_model = steps.create_model(defaults.get_config().model,
                               quantization=Quantization(activations=False))
  x = images(seed=2)
  a = float_model.apply({"params": params, "batch_stats": stats}, x)
  b = q_model.apply({"params": params, "batch_stats": stats}, x)
  difference = float(jnp.abs(a - b).max())
  assert 0 < difference < 0.05 * float(jnp.abs(a).max()), difference


def test_training_mode_normalises_with_the_batch():
  """In training the batch norm uses the batch's statistics (on top of the
  kernel folded with the running ones): the first layer's pre-activation
  mean over the batch is the BN offset."""
  model, params, stats = model_and_variables(Quantization(activations=False),
                                             activation="linear")
  _, state = model.apply({"params": params, "batch_stats": stats}, images(), train=True,
                         mutable=["batch_stats", "intermediates"],
                         capture_intermediates=lambda m, _: m.name == "stem")
  stem = state["intermediates"]["stem"]["__call__"][0]
  np.testing.assert_allclose(np.asarray(stem.mean(axis=(0, 1, 2))), 0.0, atol=0.05)
  np.testing.assert_allclose(np.asarray(stem.std(axis=(0, 1, 2))), 1.0, atol=0.05)


def test_ranges_follow_training_and_calibration():
  model, params, stats = model_and_variables(Quantization())
  assert float(stats["input_quant"]["count"]) == 0  # init does not measure
  trained = train_once(model, params, stats)
  x = images()
  assert float(trained["input_quant"]["count"]) == 1  # the first batch's own range
  np.testing.assert_allclose(float(trained["input_quant"]["min"]), float(x.min()), rtol=1e-6)
  again = train_once(model, params, trained)
  assert float(again["input_quant"]["count"]) == 2
  calibrating = steps.create_model(defaults.get_config().model,
                                   quantization=Quantization(calibrating=True))
  _, updates = calibrating.apply({"params": params, "batch_stats": stats}, x * 2,
                                 train=False, mutable=["batch_stats"])
  np.testing.assert_allclose(float(updates["batch_stats"]["input_quant"]["max"]),
                             float((x * 2).max()), rtol=1e-6)


def test_a_float_checkpoint_starts_a_quantized_network_and_back():
  _, _, float_stats = model_and_variables(None)
  _, _, q_stats = model_and_variables(Quantization())
  merged, fresh = checkpoint.merge_weights(q_stats, float_stats, "float run",
                                           only_one=quantize.is_range)
  assert fresh and all(quantize.is_range(p) for p in fresh)
  back, fresh = checkpoint.merge_weights(float_stats, q_stats, "qat run",
                                         only_one=quantize.is_range)
  assert not fresh and jax.tree.structure(back) == jax.tree.structure(float_stats)
  with pytest.raises(ConfigError, match="another architecture"):
    checkpoint.merge_weights(q_stats, float_stats, "float run")


@pytest.mark.parametrize("key,value,words", [
    ("dtype", "bfloat16", "float32 with quantization='int8'"),
    ("ptq_eval", ("per_channel",), "quantizes a float run"),
])
def test_quantization_with_what_it_cannot_honour_is_one_line(key, value, words):
  config = defaults.get_config()
  config.quantization = "int8"
  config[key] = value
  with pytest.raises(ConfigError, match=words):
    defaults.validate(config)


def test_unknown_ptq_scales_are_refused():
  config = defaults.get_config()
  config.ptq_eval = ("per_row",)
  with pytest.raises(ConfigError, match="ptq_eval"):
    defaults.validate(config)


@pytest.mark.parametrize("weights", quantize.WEIGHTS)
def test_rounded_float_variables_compute_the_quantized_evaluation(weights):
  """What a QAT run gives TFLite's converter: the float network with folded,
  rounded kernels computes the quantized network (activations unrounded)."""
  model, params, stats = model_and_variables(Quantization(weights))
  stats = train_once(model, params, stats)
  config = defaults.get_config()
  quantized = steps.create_model(config.model,
                                 quantization=Quantization(weights, activations=False))
  float_model = steps.create_model(config.model)
  x = images(seed=3)
  want = quantized.apply({"params": params, "batch_stats": stats}, x)
  rounded = quantize.rounded_float_variables({"params": params, "batch_stats": stats},
                                             weights, float_model.bn_epsilon)
  np.testing.assert_allclose(float_model.apply(rounded, x), want, atol=2e-5, rtol=1e-4)
  kernel = rounded["params"]["block_3"]["depthwise"]["conv"]["kernel"]
  grid = np.asarray(kernel / quantize.weight_scale(kernel, weights))
  np.testing.assert_allclose(grid, np.round(grid), atol=1e-3)  # already on the grid


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_both_networks_take_a_quantized_training_step(name):
  """A QAT step on V1 (no residual sums) and V2: finite loss and gradients,
  and every kernel gets a gradient through the rounding."""
  config = defaults.get_config()
  config.model = defaults.for_digits(defaults.model_config(name))
  config.model.alpha = 0.25
  config.quantization = "int8"
  model, _ = steps.config_models(config)
  params, stats = steps.initialize(model, 32, jax.random.key(0))

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": stats}, images(8), train=True,
                            mutable=["batch_stats"])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

  value, grads = jax.value_and_grad(loss)(params)
  assert np.isfinite(float(value))
  kernels = {"/".join(k.key for k in p): g for p, g in
             jax.tree_util.tree_flatten_with_path(grads)[0] if p[-1].key == "kernel"}
  assert kernels and all(np.isfinite(g).all() and np.abs(g).max() > 0
                         for g in kernels.values())


def test_kernel_ranges_measure_the_spread_per_tensor_scales_meet():
  from mobilenet_jax.studies import kernel_ranges
  ranges = np.array([1.0, 2.0, 4.0, 400.0])  # one wide channel: 0.5 / 127 * 400 > 1
  kernel = np.ones((3, 3, 1, 4)) * ranges
  params = {"block_0": {"depthwise": {"conv": {"kernel": kernel},
                                      "bn": {"scale": np.ones(4), "bias": np.zeros(4)}}}}
  stats = {"block_0": {"depthwise": {"bn": {"mean": np.zeros(4), "var": np.ones(4) - 1e-3}}}}
  got = kernel_ranges.spreads(params, stats, 1e-3)["block_0/depthwise"]
  assert got["spread"] == pytest.approx(400 / 3.0)  # against the median, 3
  assert got["zeroed"] == pytest.approx(0.25)  # 1.0 < 400 / 127 / 2
  stats["block_0"]["expand"] = {"quant": {"max": 7.5, "min": 0.0, "count": 3.0}}
  stats["block_0"]["project"] = {"quant": {"max": 2.0, "min": -1.0, "count": 3.0}}
  assert kernel_ranges.activation_tops(stats) == [7.5]  # not the bottleneck's
