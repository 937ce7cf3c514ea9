"""The stem's convolution as native patches times the kernel, against XLA's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mobilenet_jax.models import get_model
from mobilenet_jax.ops import conv as conv_ops


def lax_reference(x, kernel, strides, padding, dilation):
  return lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                  rhs_dilation=(dilation, dilation),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("size", [7, 8])  # odd and even: SAME pads differ
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("k, dilation", [(1, 1), (3, 1), (5, 1), (3, 2)])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((0, 1), (2, 0))])
@pytest.mark.parametrize("channels", [1, 3])
def test_patches_equal_lax_forward_and_gradients(size, strides, k, padding, dilation, channels):
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, channels))
  kernel = jax.random.normal(jax.random.key(1), (k, k, channels, 5))

  def loss(fn):
    return lambda x, w: jnp.sum(jnp.sin(fn(x, w, strides, padding, dilation)))

  ref = lax_reference(x, kernel, strides, padding, dilation)
  out = conv_ops.conv_patches(x, kernel, strides, padding, dilation)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  g_ref = jax.jit(jax.grad(loss(lax_reference), argnums=(0, 1)))(x, kernel)
  g_out = jax.jit(jax.grad(loss(conv_ops.conv_patches), argnums=(0, 1)))(x, kernel)
  for a, b in zip(g_out, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_native_patches_are_the_shifted_slices():
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
  for strides, padding, dilation in [(2, "SAME", 1), (1, "VALID", 2), (2, ((1, 2), (0, 1)), 1)]:
    np.testing.assert_array_equal(
        conv_ops.patches_native(x, (3, 3), strides, padding, dilation),
        conv_ops.patches_shift(x, (3, 3), strides, padding, dilation))


def test_patches_are_taken_only_for_narrow_ungrouped_inputs_with_native_kernels():
  assert conv_ops.uses_patches(3, 1, "auto")  # the stem on CPU
  assert conv_ops.uses_patches(1, 1, "native")
  assert not conv_ops.uses_patches(conv_ops.MAX_PATCH_CHANNELS + 1, 1, "auto")
  assert not conv_ops.uses_patches(4, 2, "auto")
  assert not conv_ops.uses_patches(3, 1, "lax")
  assert not conv_ops.uses_patches(3, 1, "shift")


def test_conv_module_is_flax_conv():
  """The same parameter and result as the nn.Conv it replaces."""
  x = jax.random.normal(jax.random.key(0), (2, 15, 15, 3))
  ours = conv_ops.Conv(8, 3, strides=2, name="conv")
  theirs = nn.Conv(8, (3, 3), strides=2, padding="SAME", use_bias=False)
  variables = ours.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, theirs.init(jax.random.key(1), x))
  np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x),
                             atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_model_same_with_stem_as_patches_or_lax(name, monkeypatch):
  """The network's output and parameter gradients with the stem as patches and,
  with the patches turned off, as XLA's convolution (in evaluation mode, where
  batch norm does not amplify rounding differences)."""
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  model = get_model({"name": name, "num_classes": 10, "alpha": 0.35})
  variables = model.init(jax.random.key(1), x, train=False)

  def loss_and_grads():
    loss = lambda params: jnp.sum(jnp.sin(model.apply({**variables, "params": params}, x)))
    step = jax.jit(jax.value_and_grad(loss))
    return step.lower(variables["params"]).as_text(), step(variables["params"])

  hlo_patches, (l_patches, g_patches) = loss_and_grads()
  monkeypatch.setattr(conv_ops, "MAX_PATCH_CHANNELS", 0)
  hlo_lax, (l_lax, g_lax) = loss_and_grads()
  assert "mobilenet_jax_patches" in hlo_patches and "mobilenet_jax_patches" not in hlo_lax
  np.testing.assert_allclose(l_patches, l_lax, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_patches), jax.tree.leaves(g_lax)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
