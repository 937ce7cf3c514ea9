"""Optimisers against TF1's RMSProp, schedules, the weight-decay mask, EMA."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mobilenet_jax.training import optim
from mobilenet_jax.errors import ConfigError


def _load_default_config():
  """configs/ is not a package on the path under plain `pytest`: load by file."""
  path = pathlib.Path(__file__).parents[1] / "configs" / "default.py"
  spec = importlib.util.spec_from_file_location("configs_default", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


default = _load_default_config()


def make_config(**overrides):
  config = default.get_config()
  config.update(overrides)
  return config


def run_optax(tx, params, grads):
  """Applies `tx` to a fixed list of gradients; returns the final params."""
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


# 1. "rmsprop_tf" is TF1's RMSPropOptimizer.

LR = 0.1
RNG = np.random.default_rng(0)
W0 = RNG.normal(size=(3, 4)).astype(np.float32)
GRADS = [RNG.normal(size=(3, 4)).astype(np.float32) for _ in range(5)]


def run_tf1_rmsprop():
  tf = pytest.importorskip("tensorflow")
  var = tf.Variable(W0)
  opt = tf.compat.v1.train.RMSPropOptimizer(LR, decay=0.9, momentum=0.9,
                                            epsilon=1.0)
  for g in GRADS:
    opt.apply_gradients([(tf.constant(g), var)])
  return var.numpy()


def test_rmsprop_tf_matches_tensorflow():
  config = make_config(optimizer="rmsprop_tf", learning_rate=LR,
                       lr_schedule="constant", warmup_epochs=0.0,
                       weight_decay=0.0, momentum=0.9, rmsprop_decay=0.9,
                       rmsprop_epsilon=1.0)
  tx, _ = optim.create_optimizer(config, steps_per_epoch=10, total_steps=100)
  expected = run_tf1_rmsprop()
  got = run_optax(tx, {"w": jnp.asarray(W0)}, [{"w": g} for g in GRADS])
  np.testing.assert_allclose(got["w"], expected, atol=1e-6, rtol=0)
  assert np.abs(expected - W0).max() > 1e-2  # the variable really moved

  # Optax's default (mean square starts at zero) is a different optimiser.
  plain = optax.rmsprop(LR, decay=0.9, eps=1.0, momentum=0.9)
  other = run_optax(plain, {"w": jnp.asarray(W0)}, [{"w": g} for g in GRADS])
  assert np.abs(other["w"] - expected).max() > 1e-3


# 2. Schedules.

SPE = 10      # steps per epoch
TOTAL = 100


def test_exponential_is_staircase_per_epoch():
  config = make_config(lr_schedule="exponential", learning_rate=0.2,
                       lr_decay_rate=0.98, lr_decay_epochs=1.0,
                       warmup_epochs=0.0)
  schedule = optim.create_schedule(config, SPE, TOTAL)
  for k in range(6):
    start = float(schedule(k * SPE))
    np.testing.assert_allclose(start, 0.2 * 0.98**k, rtol=1e-6)
    for step in (k * SPE + 1, k * SPE + SPE - 1):
      assert float(schedule(step)) == start


def test_exponential_counts_decay_epochs():
  config = make_config(lr_schedule="exponential", learning_rate=1.0,
                       lr_decay_rate=0.5, lr_decay_epochs=2.0,
                       warmup_epochs=0.0)
  schedule = optim.create_schedule(config, SPE, TOTAL)
  assert [float(schedule(s)) for s in (0, 19, 20, 39, 40)] == [
      1.0, 1.0, 0.5, 0.5, 0.25]


def test_warmup_is_linear_from_zero():
  config = make_config(lr_schedule="constant", learning_rate=0.4,
                       warmup_epochs=2.0)
  schedule = optim.create_schedule(config, SPE, TOTAL)
  steps = np.arange(0, 21)
  np.testing.assert_allclose([float(schedule(s)) for s in steps],
                             0.4 * steps / 20, rtol=1e-6, atol=1e-7)
  assert float(schedule(50)) == pytest.approx(0.4)


def test_exponential_decays_after_warmup():
  config = make_config(lr_schedule="exponential", learning_rate=1.0,
                       lr_decay_rate=0.98, warmup_epochs=1.0)
  schedule = optim.create_schedule(config, SPE, TOTAL)
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(SPE)) == pytest.approx(1.0)
  assert float(schedule(3 * SPE)) == pytest.approx(0.98**2)


def test_cosine_decays_to_zero_after_warmup():
  config = make_config(lr_schedule="cosine", learning_rate=0.3,
                       warmup_epochs=2.0)
  schedule = optim.create_schedule(config, SPE, TOTAL)
  assert float(schedule(0)) == 0.0
  assert float(schedule(20)) == pytest.approx(0.3)
  assert float(schedule(60)) == pytest.approx(0.15, rel=1e-5)  # half way
  assert float(schedule(TOTAL)) == pytest.approx(0.0, abs=1e-7)


# 3. Which parameters are decayed.

def model_like_params():
  k = jnp.ones((3, 3, 4, 4))
  v = jnp.ones((4,))
  return {
      "stem": {"conv": {"kernel": k}, "bn": {"scale": v, "bias": v}},
      "block_1": {"depthwise": {"conv": {"kernel": jnp.ones((3, 3, 1, 4))}},
                  "project": {"conv": {"kernel": k}}},
      "classifier": {"kernel": jnp.ones((4, 10)), "bias": jnp.ones((10,))},
  }


def test_decay_mask_default_patterns():
  mask = optim.decay_mask(model_like_params(), default.get_config().no_decay)
  assert mask == {
      "stem": {"conv": {"kernel": True},
               "bn": {"scale": False, "bias": False}},
      "block_1": {"depthwise": {"conv": {"kernel": False}},
                  "project": {"conv": {"kernel": True}}},
      "classifier": {"kernel": True, "bias": False},
  }


def test_decay_mask_without_patterns_decays_everything():
  mask = optim.decay_mask(model_like_params(), ())
  assert all(jax.tree.leaves(mask))


# 4. Weight decay reaches only the masked parameters.

def decay_step(optimizer):
  """One step with zero gradients: only weight decay can move a parameter."""
  config = make_config(optimizer=optimizer, learning_rate=1.0,
                       lr_schedule="constant", warmup_epochs=0.0,
                       weight_decay=0.1, momentum=0.0)
  tx, _ = optim.create_optimizer(config, SPE, TOTAL)
  params = {"conv": {"kernel": jnp.ones((2, 2))}, "bias": jnp.ones((2,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  return run_optax(tx, params, [zeros])


@pytest.mark.parametrize("optimizer, kernel", [
    ("sgd", 1 - 0.1),                               # coupled: -lr * wd * w
    ("rmsprop_tf", 1 - 0.1 / np.sqrt(0.9 + 0.1 * 0.1**2 + 1.0)),  # scaled
    ("adamw", 1 - 0.1),                             # decoupled: unscaled
])
def test_weight_decay_only_where_masked(optimizer, kernel):
  params = decay_step(optimizer)
  np.testing.assert_allclose(params["conv"]["kernel"], kernel, rtol=1e-6)
  np.testing.assert_array_equal(params["bias"], 1.0)


def test_grad_clip_norm():
  config = make_config(optimizer="sgd", learning_rate=1.0, momentum=0.0,
                       lr_schedule="constant", warmup_epochs=0.0,
                       weight_decay=0.0, grad_clip_norm=1.0)
  tx, _ = optim.create_optimizer(config, SPE, TOTAL)
  params = {"w": jnp.zeros((4,))}
  got = run_optax(tx, params, [{"w": jnp.full((4,), 5.0)}])  # norm 10
  np.testing.assert_allclose(got["w"], -0.5, rtol=1e-6)


# 5. EMA.

@pytest.mark.parametrize("step, decay", [
    (0, 0.1),                  # min(0.999, 1/10)
    (10, 11 / 20),             # min(0.999, 11/20)
    (1_000_000, 0.999),        # the ramp has passed the configured decay
])
def test_update_ema_ramps_decay(step, decay):
  ema = {"w": jnp.zeros((3,)), "b": jnp.full((2,), 2.0)}
  params = {"w": jnp.ones((3,)), "b": jnp.zeros((2,))}
  new = jax.jit(optim.update_ema)(ema, params, 0.999, step)
  np.testing.assert_allclose(new["w"], 1 - decay, atol=1e-6)
  np.testing.assert_allclose(new["b"], 2 * decay, atol=1e-6)


def test_update_ema_keeps_dtype():
  ema = {"w": jnp.zeros((3,), jnp.bfloat16)}
  new = optim.update_ema(ema, {"w": jnp.ones((3,), jnp.bfloat16)}, 0.99, 0)
  assert new["w"].dtype == jnp.bfloat16


# 6. Errors name the key and the valid values.

@pytest.mark.parametrize("key, value, choices", [
    ("optimizer", "adam", optim.OPTIMIZERS),
    ("lr_schedule", "linear", optim.SCHEDULES),
])
def test_bad_name_raises_config_error(key, value, choices):
  config = make_config(**{key: value})
  with pytest.raises(ConfigError) as info:
    optim.create_optimizer(config, SPE, TOTAL)
  message = str(info.value)
  assert key in message and repr(value) in message
  for choice in choices:
    assert repr(choice) in message
