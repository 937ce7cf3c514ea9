"""The 1x1 products' kernel gradient by the native kernel, against XLA's dot; a
product with its sums whose gradients come from one native pass (dot_and_sums),
and an expansion's batch statistics from its input (product_sums), against the
product's own sums."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet_jax.models import get_model
from mobilenet_jax.ops import pointwise as pw

TARGET = "mobilenet_jax_pointwise_kernel_grad"
SUMS_TARGET = "mobilenet_jax_pointwise_backward_sums"


def loss(product):
  return lambda x, w: jnp.sum(jnp.sin(product(x, w)))


# Channels run the 8-, 4- and 1-wide tiles; features the 32-, 24-, 16-, 8- and
# 1-wide ones (the 32 and 24 with AVX-512 only); 1,027 pixels end in a partial
# block of 32.
@pytest.mark.parametrize("channels, features", [
    (32, 16), (16, 96), (13, 45), (3, 5), (24, 24), (44, 64), (8, 57), (1, 1)])
def test_native_kernel_gradient_equals_xla_s(channels, features):
  x = jax.random.normal(jax.random.key(0), (1027, channels))
  w = jax.random.normal(jax.random.key(1), (channels, features))
  grad = lambda fn: jax.jit(jax.grad(loss(fn), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(pw.dot_native_grad(x, w), jnp.dot(x, w))
  for a, b in zip(grad(pw.dot_native_grad), grad(jnp.dot)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_native_gradients_under_data_parallel_match_one_device(data_parallel_grads,
                                                              monkeypatch):
  """Inside shard_map (the train step's data parallelism) the kernel's gradient is
  summed over devices; each device's input gradient is its own shard's."""
  monkeypatch.setattr(pw, "NATIVE_GRAD_MIN_PIXELS", 0)  # these few pixels too
  x = jax.random.normal(jax.random.key(0), (8, 9, 9, 24))
  kernel = jax.random.normal(jax.random.key(1), (1, 1, 24, 16))

  def grads(depthwise_impl, x, kernel):
    product = lambda x, w: pw.pointwise(x, w, depthwise_impl=depthwise_impl)
    return jax.grad(loss(product), argnums=(0, 1))(x, kernel)

  dx, dkernel = data_parallel_grads(functools.partial(grads, "native"), x, kernel)
  dx_ref, dkernel_ref = grads("lax", x, kernel)
  np.testing.assert_allclose(dx, dx_ref, atol=1e-5)
  np.testing.assert_allclose(dkernel, dkernel_ref, atol=1e-4, rtol=1e-5)


def test_native_gradient_is_taken_only_for_long_thin_float32_products_on_native_cpu():
  many, few = pw.NATIVE_GRAD_MIN_PIXELS, pw.NATIVE_GRAD_MAX_FEATURES
  assert pw.uses_native_grad(401408, 16, jnp.float32, "auto")  # V2's first projection
  assert pw.uses_native_grad(many, few, jnp.float32, "native")
  assert not pw.uses_native_grad(many - 1, few, jnp.float32, "auto")
  assert not pw.uses_native_grad(many, few + 1, jnp.float32, "auto")
  assert not pw.uses_native_grad(many, few, jnp.bfloat16, "auto")
  assert not pw.uses_native_grad(many, few, jnp.float32, "lax")
  assert not pw.uses_native_grad(many, few, jnp.float32, "shift")


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_model_same_with_native_kernel_gradients_or_xla_s(name, monkeypatch):
  """The network's loss and parameter gradients in training with every 1x1
  product's kernel gradient by the native kernel (those whose batch norm the next
  layer applies, both gradients: dot_and_sums), and by XLA's dot. 64x64 images: at
  32x32 the last layers' batch norm is over two values, and V2's gradients there
  reach 1e5 in terms whose sums cancel to 0.1, so the input gradient's rounding
  (dot_and_sums' or XLA's) moved them by more than their size."""
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  model = get_model({"name": name, "num_classes": 10, "alpha": 0.35, "dropout": 0.0})
  variables = model.init(jax.random.key(1), x, train=False)

  def loss_and_grads():
    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])
      return jnp.sum(jnp.sin(logits))
    step = jax.jit(jax.value_and_grad(loss))
    return step.lower(variables["params"]).as_text(), step(variables["params"])

  # The expansions' statistics as the products' own sums in both: from the inputs,
  # their rounding differs with the thresholds below, and at 2x2 pixels and batch 2
  # this network's loss moves with it (test_product_sums_* checks those).
  monkeypatch.setattr(pw, "SUMS_FROM_INPUT_MIN_RATIO", 10**6)
  monkeypatch.setattr(pw, "NATIVE_GRAD_MIN_PIXELS", 0)
  monkeypatch.setattr(pw, "NATIVE_GRAD_MAX_FEATURES", 10**6)
  hlo_native, (l_native, g_native) = loss_and_grads()
  monkeypatch.setattr(pw, "NATIVE_GRAD_MAX_FEATURES", -1)
  hlo_xla, (l_xla, g_xla) = loss_and_grads()
  assert SUMS_TARGET in hlo_native
  assert TARGET not in hlo_xla and SUMS_TARGET not in hlo_xla
  np.testing.assert_allclose(l_native, l_xla, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_native), jax.tree.leaves(g_xla)):
    # Gradients here are large (batch norm over eight values): a sum's rounding at
    # that scale moves an element that cancels, so the absolute tolerance is a
    # millionth of the tensor's largest gradient.
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=max(1e-4, 1e-6 * np.abs(b).max()))


def direct_sums(x, kernel):
  y = jnp.dot(x, kernel, precision="highest")
  return jnp.stack([jnp.sum(y, axis=0), jnp.sum(y * y, axis=0)])


# Centered inputs (a linear bottleneck's), and all-positive ones with a mean three
# times their spread (a ReLU6 bottleneck's), whose Gram matrix sums terms of both
# signs into sum(y * y); the native Gram product (1,027 pixels) and XLA's (300).
@pytest.mark.parametrize("pixels, shift", [(1027, 0.0), (1027, 3.0), (300, 3.0)])
def test_product_sums_are_the_sums_of_the_product_and_of_its_square(pixels, shift,
                                                                     monkeypatch):
  monkeypatch.setattr(pw, "NATIVE_GRAD_MIN_PIXELS", 1000)
  x = jax.random.normal(jax.random.key(0), (pixels, 13)) + shift
  kernel = jax.random.normal(jax.random.key(1), (13, 78))
  sums, ref = jax.jit(pw.product_sums)(x, kernel), direct_sums(x, kernel)
  np.testing.assert_allclose(sums, ref, rtol=2e-5, atol=2e-5 * float(jnp.max(ref[1])))
  # The moments batch norm takes from them: variance to 1e-5 of E[y^2].
  n = pixels
  var, var_ref = (s[1] / n - (s[0] / n) ** 2 for s in (sums, ref))
  np.testing.assert_allclose(var, var_ref, atol=1e-5 * float(jnp.max(ref[1] / n)))


def test_product_sums_gradients_match_those_of_the_product_s_sums():
  x = jax.random.normal(jax.random.key(0), (1027, 16)) + 1.0
  kernel = jax.random.normal(jax.random.key(1), (16, 96))
  weights = jax.random.normal(jax.random.key(2), (2, 96))
  grads = lambda sums: jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(sums(x, k) / 1e3)
                                                             * weights), argnums=(0, 1)))
  for a, b in zip(grads(pw.product_sums)(x, kernel), grads(direct_sums)(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def product_then_sums(x, kernel):
  y = jnp.dot(x, kernel, precision="highest")
  return y, jnp.stack([jnp.sum(y, axis=0), jnp.sum(y * y, axis=0)])


def loss_of_both(fn, weights):
  """A loss of the product and of its sums, so that both cotangents reach fn."""
  def loss(x, kernel):
    y, sums = fn(x, kernel)
    return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.sin(sums / 1e3) * weights)
  return loss


# Channels run the input gradient's 32-, 8- and 1-wide loops and the kernel
# gradient's tiles; features their 8- and 1-wide ones; 1,027 pixels end in a partial
# block of 32 whose last 3 pixels take the 2- and 1-pixel loops.
@pytest.mark.parametrize("channels, features", [(32, 64), (45, 13), (3, 5)])
def test_dot_and_sums_equal_the_product_and_its_sums_and_gradients(channels, features):
  x = jax.random.normal(jax.random.key(0), (1027, channels)) + 0.5
  kernel = jax.random.normal(jax.random.key(1), (channels, features))
  weights = jax.random.normal(jax.random.key(2), (2, features))
  y, sums = pw.dot_and_sums(x, kernel)
  y_ref, sums_ref = product_then_sums(x, kernel)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sums, sums_ref, rtol=1e-5, atol=1e-5 * float(jnp.max(sums_ref)))
  grads = lambda fn: jax.jit(jax.grad(loss_of_both(fn, weights), argnums=(0, 1)))(x, kernel)
  for name, a, b in zip(("dx", "dkernel"), grads(pw.dot_and_sums), grads(product_then_sums)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))),
                               err_msg=name)


def test_dot_and_sums_under_data_parallel_are_each_device_s(data_parallel_grads):
  """Inside shard_map each device's sums are its shard's; the kernel's gradient is
  summed over devices, the input's is the shard's."""
  x = jax.random.normal(jax.random.key(0), (8, 9, 9, 12))
  kernel = jax.random.normal(jax.random.key(1), (12, 20))
  weights = jax.random.normal(jax.random.key(2), (2, 20))

  def grads(fn, x, kernel):
    loss = loss_of_both(fn, weights)
    return jax.grad(lambda x, k: loss(x.reshape(-1, 12), k), argnums=(0, 1))(x, kernel)

  dx, dkernel = data_parallel_grads(functools.partial(grads, pw.dot_and_sums), x, kernel)
  shards = x.reshape(jax.device_count(), -1, 9, 9, 12)
  ref = [grads(product_then_sums, shard, kernel) for shard in shards]
  np.testing.assert_allclose(dx, jnp.concatenate([r[0] for r in ref]), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dkernel, sum(r[1] for r in ref), rtol=1e-4, atol=1e-4)


def test_product_sums_under_data_parallel_are_each_device_s(data_parallel_grads):
  """Inside shard_map each device's sums are its shard's (batch norm adds them over
  devices); the kernel's gradient is summed over devices, the input's is the shard's."""
  x = jax.random.normal(jax.random.key(0), (8, 9, 9, 12))
  kernel = jax.random.normal(jax.random.key(1), (12, 48))

  def grads(sums, x, kernel):
    loss = lambda x, k: jnp.sum(jnp.sin(sums(x.reshape(-1, 12), k) / 100))
    return jax.grad(loss, argnums=(0, 1))(x, kernel)

  dx, dkernel = data_parallel_grads(functools.partial(grads, pw.product_sums), x, kernel)
  devices = jax.device_count()
  shards = x.reshape(devices, -1, 9, 9, 12)
  ref = [grads(direct_sums, shard, kernel) for shard in shards]
  np.testing.assert_allclose(dx, jnp.concatenate([r[0] for r in ref]), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dkernel, sum(r[1] for r in ref), rtol=1e-4, atol=1e-4)


def test_statistics_come_from_the_input_only_for_float32_expansions_on_native_cpu():
  ratio = pw.SUMS_FROM_INPUT_MIN_RATIO
  assert pw.sums_from_input(16, 96, jnp.float32, "auto")  # V2's expansions (6x)
  assert pw.sums_from_input(16, 16 * ratio, jnp.float32, "native")
  assert not pw.sums_from_input(16, 16 * ratio - 1, jnp.float32, "auto")  # V1's, projections
  assert not pw.sums_from_input(16, 96, jnp.bfloat16, "auto")
  assert not pw.sums_from_input(16, 96, jnp.float32, "lax")
  assert not pw.sums_from_input(16, 96, jnp.float32, "shift")
