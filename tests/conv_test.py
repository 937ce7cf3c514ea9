"""The stem's convolution by the native kernel, against XLA's."""

import functools

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
@pytest.mark.parametrize("channels, features", [(1, 5), (3, 45), (4, 16)])
def test_native_equals_lax_forward_and_gradients(size, strides, k, padding, dilation,
                                                 channels, features):
  """45 features run the 32-, 8- and 1-wide loops; 16 the 16-wide; 5 the 1-wide only."""
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, channels))
  kernel = jax.random.normal(jax.random.key(1), (k, k, channels, features))

  def loss(fn):
    return lambda x, w: jnp.sum(jnp.sin(fn(x, w, strides, padding, dilation)))

  ref = lax_reference(x, kernel, strides, padding, dilation)
  out = conv_ops.conv_native(x, kernel, strides, padding, dilation)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-5)
  g_ref = jax.jit(jax.grad(loss(lax_reference), argnums=(0, 1)))(x, kernel)
  g_out = jax.jit(jax.grad(loss(conv_ops.conv_native), argnums=(0, 1)))(x, kernel)
  for a, b in zip(g_out, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_native_keeps_a_bfloat16_input_s_dtype():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3)).astype(jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 8)).astype(jnp.bfloat16)
  out = conv_ops.conv_native(x, kernel, 2, "SAME")
  ref = lax_reference(x.astype(jnp.float32), kernel.astype(jnp.float32), 2, "SAME", 1)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), ref, rtol=1e-2, atol=5e-2)
  dk = jax.grad(lambda k: jnp.sum(conv_ops.conv_native(x, k, 2, "SAME").astype(jnp.float32)))(
      kernel)
  assert dk.dtype == jnp.bfloat16


def test_native_gradients_under_data_parallel_match_one_device(data_parallel_grads):
  """Inside shard_map (the train step's data parallelism) the kernel's gradient is
  summed over devices; each device's input gradient is its own shard's."""
  x = jax.random.normal(jax.random.key(0), (8, 9, 9, 3))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 16))

  def grads(fn, x, kernel):
    return jax.grad(lambda x, w: jnp.sum(jnp.sin(fn(x, w, 2, "SAME", 1))), argnums=(0, 1))(
        x, kernel)

  dx, dkernel = data_parallel_grads(functools.partial(grads, conv_ops.conv_native), x, kernel)
  dx_ref, dkernel_ref = grads(lax_reference, x, kernel)
  np.testing.assert_allclose(dx, dx_ref, atol=1e-5)
  np.testing.assert_allclose(dkernel, dkernel_ref, atol=1e-4, rtol=1e-5)


def test_native_is_taken_only_for_narrow_ungrouped_inputs_with_native_kernels():
  assert conv_ops.uses_native(3, 1, "auto")  # the stem on CPU
  assert conv_ops.uses_native(1, 1, "native")
  assert not conv_ops.uses_native(conv_ops.MAX_NATIVE_CHANNELS + 1, 1, "auto")
  assert not conv_ops.uses_native(4, 2, "auto")
  assert not conv_ops.uses_native(3, 1, "lax")
  assert not conv_ops.uses_native(3, 1, "shift")


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
def test_model_same_with_stem_native_or_lax(name, monkeypatch):
  """The network's output and parameter gradients with the stem by the native
  kernel and, with it turned off, as XLA's convolution (in evaluation mode, where
  batch norm does not amplify rounding differences)."""
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  model = get_model({"name": name, "num_classes": 10, "alpha": 0.35})
  variables = model.init(jax.random.key(1), x, train=False)

  def loss_and_grads():
    loss = lambda params: jnp.sum(jnp.sin(model.apply({**variables, "params": params}, x)))
    step = jax.jit(jax.value_and_grad(loss))
    return step.lower(variables["params"]).as_text(), step(variables["params"])

  hlo_native, (l_native, g_native) = loss_and_grads()
  monkeypatch.setattr(conv_ops, "MAX_NATIVE_CHANNELS", 0)
  hlo_lax, (l_lax, g_lax) = loss_and_grads()
  for target in ("mobilenet_jax_narrow_conv", "mobilenet_jax_narrow_conv_kernel_grad"):
    assert target in hlo_native and target not in hlo_lax
  np.testing.assert_allclose(l_native, l_lax, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_native), jax.tree.leaves(g_lax)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
