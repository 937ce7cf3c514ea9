"""The fused batch norm + activation against flax.linen.BatchNorm and the activation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mobilenet_jax import parallel
from mobilenet_jax.ops import native
from mobilenet_jax.ops.batchnorm import BatchNormAct, value

REFERENCE_ACTIVATIONS = {"relu6": jax.nn.relu6, "relu": jax.nn.relu, "linear": lambda y: y}


def reference(activation, **kw):
  bn = nn.BatchNorm(**kw)
  return bn, REFERENCE_ACTIVATIONS[activation]


def data():
  # An offset mean and a spread that crosses both ReLU6 kinks.
  x = 3.0 + 4.0 * jax.random.normal(jax.random.key(0), (8, 5, 5, 6))
  k1, k2 = jax.random.split(jax.random.key(1))
  params = {"scale": 1.0 + 0.3 * jax.random.normal(k1, (6,)),
            "bias": 0.5 * jax.random.normal(k2, (6,))}
  stats = {"mean": jnp.full((6,), 0.2), "var": jnp.full((6,), 1.5)}
  cotangent = jax.random.normal(jax.random.key(2), x.shape)
  return x, params, stats, cotangent


def train_apply(module, act, params, stats, x, **call):
  out, updates = module.apply({"params": params, "batch_stats": stats}, x,
                              mutable=["batch_stats"], **call)
  return act(value(out)), updates["batch_stats"]


def loss_and_stats(module, act, cotangent, x, params, stats, **call):
  out, new_stats = train_apply(module, act, params, stats, x, **call)
  return jnp.sum(out * cotangent), new_stats


# defer: the result left pending for a native depthwise layer (a PreActivation,
# its gradient through autodiff), here taken by value().
@pytest.mark.parametrize("defer", [False, True])
@pytest.mark.parametrize("activation", ["relu6", "relu", "linear"])
def test_matches_flax_batchnorm_then_activation(activation, defer):
  x, params, stats, cotangent = data()
  kw = dict(momentum=0.9, epsilon=1e-3)
  fused = BatchNormAct(activation=activation, **kw)
  ref, act = reference(activation, use_running_average=False, **kw)

  results = []
  for module, a, call in ((fused, lambda y: y, dict(defer=defer)), (ref, act, {})):
    grad_fn = jax.jit(jax.grad(functools.partial(loss_and_stats, module, a, cotangent, **call),
                               argnums=(0, 1), has_aux=True))
    results.append((train_apply(module, a, params, stats, x, **call),
                    grad_fn(x, params, stats)))
  (out, new_stats), ((dx, dparams), _) = results[0]
  (out_ref, new_stats_ref), ((dx_ref, dparams_ref), _) = results[1]
  np.testing.assert_allclose(out, out_ref, atol=2e-5)
  for key in ("mean", "var"):  # the running averages move the same way
    np.testing.assert_allclose(new_stats[key], new_stats_ref[key], rtol=1e-5)
  np.testing.assert_allclose(dx, dx_ref, atol=1e-4)
  for key in ("scale", "bias"):
    np.testing.assert_allclose(dparams[key], dparams_ref[key], rtol=1e-4, atol=1e-3)
  assert float(jnp.abs(dparams["scale"]).max()) > 1.0  # not trivially zero

  # Evaluation: the running averages, no update.
  evaluated = fused.clone(use_running_average=True).apply(
      {"params": params, "batch_stats": stats}, x)
  ref_eval = ref.clone(use_running_average=True).apply(
      {"params": params, "batch_stats": stats}, x)
  np.testing.assert_allclose(evaluated, act(ref_eval), atol=2e-5)


@pytest.mark.parametrize("defer", [False, True])
@pytest.mark.parametrize("sync", [False, True])
def test_matches_flax_across_devices(sync, defer):
  """In the train step's shard_map: per-device statistics, or with sync BN the
  statistics of the whole batch; parameter gradients summed over devices."""
  x, params, stats, cotangent = data()
  mesh = parallel.create_mesh()
  assert mesh.size > 1 and x.shape[0] % mesh.size == 0
  axis = parallel.DATA if sync else None
  kw = dict(momentum=0.9, epsilon=1e-3, axis_name=axis)
  fused = BatchNormAct(activation="relu6", **kw)
  ref, act = reference("relu6", use_running_average=False, **kw)

  def step(module, a, call, params, stats, x, cotangent):
    (dx, dparams), new_stats = jax.grad(
        functools.partial(loss_and_stats, module, a, cotangent, **call), argnums=(0, 1),
        has_aux=True)(x, params, stats)
    if not sync:  # per-device statistics differ; compare their average
      new_stats = jax.lax.pmean(new_stats, parallel.DATA)
    return dx, dparams, new_stats

  def run(module, a, call):
    fn = jax.jit(jax.shard_map(functools.partial(step, module, a, call), mesh=mesh,
                               in_specs=(P(), P(), P(parallel.DATA), P(parallel.DATA)),
                               out_specs=(P(parallel.DATA), P(), P())))
    batch = parallel.shard_batch({"x": x, "c": cotangent}, mesh)
    return fn(parallel.replicate(params, mesh), parallel.replicate(stats, mesh),
              batch["x"], batch["c"])

  got, want = run(fused, lambda y: y, dict(defer=defer)), run(ref, act, {})
  np.testing.assert_allclose(got[0], want[0], atol=1e-4)
  for a, b in zip(jax.tree.leaves(got[1:]), jax.tree.leaves(want[1:])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


# 11 channels: AddBlock's registers and scalar tail; 40 and 99: the pass in the order
# of memory (more than 32 channels), with and without a scalar tail.
@pytest.mark.parametrize("channels", [11, 40, 99])
@pytest.mark.parametrize("activation", [0, 2])  # linear, ReLU6
def test_native_channel_sums_are_the_masked_sums_in_float64(channels, activation):
  """MaskedChannelSums (batch norm's sums on CPU): sum of v and of v * y over all but
  the channel axis, v = dz where act(y * a + b) passes the gradient, over several
  rows of several pixels (the pass's per-row sums and its workers' partial sums)."""
  rng = np.random.default_rng(channels)
  shape = (3, 6, 7, channels)
  dz, y = rng.standard_normal(shape, np.float32), 4 * rng.standard_normal(shape, np.float32)
  a, b = (rng.standard_normal(channels, np.float32) for _ in range(2))
  got = native.call("MaskedChannelSums", (2, channels), *map(jnp.asarray, (dz, y, a, b)),
                    activation=activation)
  pre, v = y.astype(np.float64) * a + b, dz.astype(np.float64)
  if activation == 2:
    v = np.where((pre > 0) & (pre < 6), v, 0.0)
  want = np.stack([v.sum(axis=(0, 1, 2)), (v * y).sum(axis=(0, 1, 2))])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_bfloat16_computes_statistics_in_float32():
  x, params, stats, _ = data()
  out, _ = BatchNormAct(activation="relu6", dtype=jnp.bfloat16).apply(
      {"params": params, "batch_stats": stats}, x.astype(jnp.bfloat16),
      mutable=["batch_stats"])
  assert out.dtype == jnp.bfloat16
  ref, _ = nn.BatchNorm(use_running_average=False, epsilon=1e-3).apply(
      {"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
  np.testing.assert_allclose(out.astype(jnp.float32), jax.nn.relu6(ref), atol=0.05)


@pytest.mark.parametrize("activation", ["relu6", "linear"])
def test_bfloat16_gradients_match_flax_in_float32(activation):
  """In bfloat16 the backward pass keeps x in bfloat16 and recomputes the
  pre-activation from it: its gradients are float32 flax's on the same
  (bfloat16-rounded) input, within bfloat16's resolution."""
  x, params, stats, cotangent = data()
  x = x.astype(jnp.bfloat16)
  fused = BatchNormAct(activation=activation, dtype=jnp.bfloat16)
  ref, act = reference(activation, use_running_average=False, epsilon=1e-3)

  def grads(module, a, x):
    return jax.jit(jax.grad(functools.partial(loss_and_stats, module, a, cotangent),
                            argnums=(0, 1), has_aux=True))(x, params, stats)[0]

  (dx, dparams), (dx_ref, dparams_ref) = (grads(fused, lambda y: y, x),
                                          grads(ref, act, x.astype(jnp.float32)))
  assert dx.dtype == jnp.bfloat16
  scale = float(jnp.max(jnp.abs(dx_ref)))
  np.testing.assert_allclose(dx.astype(jnp.float32), dx_ref, atol=0.02 * scale)
  for key in ("scale", "bias"):
    np.testing.assert_allclose(dparams[key], dparams_ref[key], rtol=0.02, atol=0.05)


@pytest.mark.parametrize("bottleneck_activation", ["linear", "relu6"])
def test_a_network_with_flax_batchnorm_is_the_same_network(bottleneck_activation):
  """batchnorm_impl="flax" (the reference the reports' artifact check trains)
  has the fused network's variables, outputs, batch statistics and gradients."""
  from mobilenet_jax.models import get_model
  config = dict(name="mobilenet_v2", alpha=0.35, num_classes=10,
                bottleneck_activation=bottleneck_activation, bn_momentum=0.9, dropout=0.0,
                blocks=((1, 16, 1, 1), (6, 24, 2, 2)))
  fused = get_model(config)
  ref = get_model(config, batchnorm_impl="flax")
  x = jax.random.normal(jax.random.key(5), (4, 32, 32, 3))
  variables = fused.init(jax.random.key(1), x, train=False)
  assert jax.tree.structure(ref.init(jax.random.key(1), x, train=False)) == \
      jax.tree.structure(variables)
  # A ReLU6 network's gradient jumps where an activation crosses a kink, and two
  # float32 implementations differ there by 1e-6 or more (more under jax 0.7, whose
  # float32 reductions are less exact than the fused path's double-accumulated
  # sums). With key 0 one of the head's 327,680 activations lies 8e-7 from a kink
  # under jax 0.7.2, on the other side in the fused network, and that one element
  # moves every gradient below it by percents: rounding, not the implementation.
  # Key 5 has no activation that close under jax 0.7.2 or 0.10.2, eager or jitted.

  def loss(model, params):
    out, updates = model.apply({**variables, "params": params}, x, train=True,
                               mutable=["batch_stats"])
    return jnp.sum(out * jnp.arange(10.0)), (out, updates["batch_stats"])

  (a, (out_a, stats_a)), grad_a = jax.value_and_grad(
      functools.partial(loss, fused), has_aux=True)(variables["params"])
  (b, (out_b, stats_b)), grad_b = jax.value_and_grad(
      functools.partial(loss, ref), has_aux=True)(variables["params"])
  np.testing.assert_allclose(out_a, out_b, rtol=1e-4, atol=1e-4)
  for x1, x2 in zip(jax.tree.leaves((stats_a, grad_a)), jax.tree.leaves((stats_b, grad_b))):
    np.testing.assert_allclose(x1, x2, rtol=1e-3, atol=1e-4)
  with pytest.raises(Exception, match="batchnorm_impl"):
    get_model(config, batchnorm_impl="cudnn").init(jax.random.key(1), x)
