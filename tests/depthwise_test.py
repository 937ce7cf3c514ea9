"""The shifted-multiply-add depthwise conv against XLA's grouped convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet_jax.models import get_model
from mobilenet_jax.models.depthwise import depthwise_lax, depthwise_shift


@pytest.mark.parametrize("size", [7, 8])  # odd and even: SAME pads differ
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", ((0, 1), (0, 1))])
def test_shift_equals_lax_forward_and_gradients(size, strides, k, multiplier, padding):
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
  kernel = jax.random.normal(jax.random.key(1), (k, k, 1, 3 * multiplier))

  def loss(fn):
    return lambda x, w: jnp.sum(jnp.sin(fn(x, w, strides, padding)))

  ref = depthwise_lax(x, kernel, strides, padding)
  out = depthwise_shift(x, kernel, strides, padding)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  g_ref = jax.jit(jax.grad(loss(depthwise_lax), argnums=(0, 1)))(x, kernel)
  g_out = jax.jit(jax.grad(loss(depthwise_shift), argnums=(0, 1)))(x, kernel)
  for a, b in zip(g_out, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


# A short V1 keeps this quick; it has stride-2 (Keras-padded) and depth-
# multiplier layers, the cases where the implementations could part; V2's
# "SAME" padding is covered layer by layer above.
def test_whole_model_same_with_either_implementation():
  model_config = dict(name="mobilenet_v1", depth_multiplier=2,
                      blocks=((64, 1), (128, 2), (128, 1)))
  x = jax.random.normal(jax.random.key(0), (2, 33, 33, 3))
  shift = get_model(dict(model_config, alpha=0.35, num_classes=7, depthwise_impl="shift"))
  slow = get_model(dict(model_config, alpha=0.35, num_classes=7, depthwise_impl="lax"))
  variables = slow.init(jax.random.key(1), x)
  # Same parameter tree and initial values: checkpoints work with either.
  assert jax.tree.all(jax.tree.map(jnp.array_equal, shift.init(jax.random.key(1), x), variables))
  np.testing.assert_allclose(shift.apply(variables, x), slow.apply(variables, x), atol=1e-4)
