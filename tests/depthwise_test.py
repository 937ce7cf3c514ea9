"""The fast depthwise convolutions (native kernel, shifted multiply-adds) against
XLA's grouped convolution."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

from mobilenet_jax import parallel
from mobilenet_jax.errors import ConfigError
from mobilenet_jax.models import get_model
from mobilenet_jax.ops import depthwise, native
from mobilenet_jax.ops.batchnorm import activate
from mobilenet_jax.ops.depthwise import depthwise_lax, depthwise_native, depthwise_shift

FAST = {"shift": depthwise_shift, "native": depthwise_native}
# The grids below trace the shifted multiply-adds per case, which is slow; the
# fast tier checks the native kernel (the CPU default) on them, and shift on
# the smaller cases further down.
GRID_IMPLS = [pytest.param(i, marks=pytest.mark.slow) if i == "shift" else i
              for i in sorted(FAST)]


def lax_reference(x, kernel, strides, padding, dilation):
  """lax's own dilated grouped convolution, independent of depthwise_lax."""
  return lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                  rhs_dilation=(dilation, dilation),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=x.shape[-1])


def assert_matches_lax(impl, size, strides, k, multiplier, padding, dilation):
  # 11 channels: the native kernel's 8-wide vector loops and its scalar tail, on
  # interior and edge columns alike.
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 11))
  kernel = jax.random.normal(jax.random.key(1), (k, k, 1, 11 * multiplier))

  def loss(fn):
    return lambda x, w: jnp.sum(jnp.sin(fn(x, w, strides, padding, dilation)))

  ref = lax_reference(x, kernel, strides, padding, dilation)
  out = FAST[impl](x, kernel, strides, padding, dilation)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  g_ref = jax.jit(jax.grad(loss(lax_reference), argnums=(0, 1)))(x, kernel)
  g_out = jax.jit(jax.grad(loss(FAST[impl]), argnums=(0, 1)))(x, kernel)
  for a, b in zip(g_out, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [7, 8])  # odd and even: SAME pads differ
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", ((0, 1), (2, 0))])
@pytest.mark.parametrize("impl", GRID_IMPLS)
def test_fast_equals_lax_forward_and_gradients(size, strides, k, multiplier, padding, impl):
  assert_matches_lax(impl, size, strides, k, multiplier, padding, 1)


# Output-stride 8/16 backbones dilate by 2, 4 (8 ...); rate 4 on 7 or 8 pixels
# puts whole rows of taps in the padding. Stride 2 with rate > 1 (which TF-slim
# never builds, but lax allows) is covered too.
@pytest.mark.parametrize("size", [7, 8, 13])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2, 4])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("impl", GRID_IMPLS)
def test_dilated_fast_equals_lax_forward_and_gradients(size, strides, dilation, multiplier, impl):
  assert_matches_lax(impl, size, strides, 3, multiplier, "SAME", dilation)


@pytest.mark.parametrize("strides, multiplier, padding", [
    (1, 1, "SAME"), (2, 2, "SAME"), (1, 2, ((3, 4), (0, 5))), (2, 1, "VALID")])
@pytest.mark.parametrize("impl", sorted(FAST))
def test_dilated_kernel_5_and_explicit_padding(strides, multiplier, padding, impl):
  assert_matches_lax(impl, 13, strides, 5, multiplier, padding, 2)


def test_depthwise_lax_dilation_is_rhs_dilation():
  x = jax.random.normal(jax.random.key(0), (2, 9, 10, 4))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 8))
  np.testing.assert_array_equal(depthwise_lax(x, kernel, 1, "SAME", 2),
                                lax_reference(x, kernel, 1, "SAME", 2))


@pytest.mark.parametrize("impl", ["lax", "shift", "native"])
def test_depthwise_conv_module_dilation_matches_flax_conv(impl):
  """DepthwiseConv(dilation=r) is nn.Conv(kernel_dilation=r, feature_group_count=C),
  with the same kernel parameter."""
  x = jax.random.normal(jax.random.key(0), (2, 14, 14, 6))
  module = depthwise.DepthwiseConv(12, 3, impl=impl, dilation=2)
  variables = module.init(jax.random.key(1), x)
  assert variables["params"]["kernel"].shape == (3, 3, 1, 12)
  conv = nn.Conv(12, (3, 3), padding="SAME", kernel_dilation=2, feature_group_count=6,
                 use_bias=False)
  np.testing.assert_allclose(module.apply(variables, x), conv.apply(variables, x),
                             atol=1e-5, rtol=1e-5)


def test_dilated_geometry_is_tf_same():
  # 14 pixels, k 3, rate 2: window 5, total pad 4 -> (2, 2), 14 out; stride 2: 7 out
  # and total pad (7 - 1) * 2 + 5 - 14 = 3 -> (1, 2), the extra pixel after.
  assert depthwise.spatial_geometry((1, 14, 13, 1), (3, 3), 1, "SAME", 2) == (
      ((2, 2), (2, 2)), (14, 13))
  assert depthwise.spatial_geometry((1, 14, 14, 1), (3, 3), 2, "SAME", 2) == (
      ((1, 2), (1, 2)), (7, 7))
  assert depthwise.output_size(14, 3, 1, (0, 0), 4) == 6  # VALID: 14 - 9 + 1


@pytest.mark.parametrize("dilation", [0, -1, 1.5, True])
@pytest.mark.parametrize("impl", sorted(depthwise.IMPL_FNS))
def test_bad_dilation_is_a_clear_error(dilation, impl):
  x, kernel = jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 1, 2))
  with pytest.raises(ConfigError, match="dilation"):
    depthwise.IMPL_FNS[impl](x, kernel, 1, "SAME", dilation)


@pytest.mark.parametrize("strides, dilation, channels, multiplier, prologue, epilogue", [
    (1, 1, 45, 1, None, True), (2, 1, 45, 1, None, True), (1, 2, 37, 1, None, True),
    (2, 1, 5, 2, None, True), (1, 1, 45, 1, "shift", True), (2, 1, 37, 1, "shift", True),
    (1, 2, 45, 1, "shift", True), (1, 1, 45, 1, "scale", False), (2, 1, 37, 1, "scale", False),
    (1, 2, 45, 1, "scale", False), (2, 1, 256, 1, "shift", True),
    (1, 1, 512, 1, "scale", False)])
@pytest.mark.parametrize("activation", ["relu6", "relu", "linear"])
def test_native_fused_forward_equals_reference_and_gradients(strides, dilation, channels,
                                                             multiplier, prologue, epilogue,
                                                             activation):
  """The depthwise with batch norms on the way, against the same ops composed
  around lax, forward and every gradient. Inference: the previous layer's shift
  and activation as the prologue, this layer's bias and activation as the
  epilogue. Training: the previous layer's scale, shift and activation as the
  prologue (the kernel gradient reads through it too), no epilogue. 45 and 37
  channels reach the kernel's 32-, 8- and 1-wide loops; 256 and 512, its rows and
  taps padded against cache-set conflicts (PaddedStride); inputs wide enough that
  ReLU6 clips at both ends."""
  keys = jax.random.split(jax.random.key(0), 5)
  x = 3 * jax.random.normal(keys[0], (2, 9, 8, channels))
  kernel = jax.random.normal(keys[1], (3, 3, 1, channels * multiplier))
  bias = jax.random.normal(keys[2], (channels * multiplier,)) if epilogue else None
  shift = jax.random.normal(keys[3], (channels,)) if prologue else None
  scale = 1.5 + 0.5 * jax.random.normal(keys[4], (channels,)) if prologue == "scale" else None
  # A different activation before than after, where there is an after.
  pre = ("relu6" if activation == "relu" else "relu") if epilogue else activation

  def fn(impl):
    return lambda x, w, b, s, a: depthwise.depthwise_bias_act(
        x, w, b, activation, strides, "SAME", dilation, impl, s, pre, input_scale=a)

  def reference(x, w, b, s, a):
    x = x if s is None else activate(x * (1 if a is None else a) + s, pre)
    y = lax_reference(x, w, strides, "SAME", dilation)
    return y if b is None else activate(y + b, activation)

  args = (x, kernel, bias, shift, scale)
  out, ref = fn("native")(*args), reference(*args)
  clipped = ref if epilogue else activate(x * (1 if scale is None else scale) + shift, pre)
  if "relu6" in (activation if epilogue else pre):
    assert float(jnp.mean(clipped == 6.0)) > 0.05 and float(jnp.mean(clipped == 0.0)) > 0.05
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  argnums = tuple(i for i, a in enumerate(args) if a is not None)
  loss = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=argnums))
  for a, b in zip(loss(fn("native"))(*args), loss(reference)(*args)):
    assert_gradient_close(a, b, rtol=1e-4)


def assert_gradient_close(got, want, rtol, err_msg=""):
  """A gradient against lax's. A parameter's gradient sums up to 1,620 terms per
  channel in float32, in another order than lax's: where they cancel, the rounding is
  relative to the terms (the largest gradient), not to the sum (0.2% of a 1.96 among
  566s under jax 0.7.2; 2e-4 of a 0.64 in a 3x3x512 kernel's gradient)."""
  np.testing.assert_allclose(got, want, atol=1e-5 * float(jnp.max(jnp.abs(want))) + 1e-4,
                             rtol=rtol, err_msg=err_msg)


def conv_batchnorm_reference(x, input_scale, input_shift, kernel, scale, bias, strides,
                             dilation, input_activation, activation):
  """act(BatchNorm(lax depthwise(input_act(x * input_scale + input_shift)))) with
  the batch's statistics as flax takes them (biased variance E[y^2] - E[y]^2)."""
  x = activate(x * input_scale + input_shift, input_activation)
  y = lax_reference(x, kernel, strides, "SAME", dilation)
  mean = jnp.mean(y, axis=(0, 1, 2))
  var = jnp.mean(y * y, axis=(0, 1, 2)) - mean * mean
  return activate((y - mean) * lax.rsqrt(var + 1e-3) * scale + bias, activation), mean, var


@pytest.mark.parametrize("strides, dilation, channels", [(1, 1, 45), (2, 1, 37), (1, 2, 45)])
@pytest.mark.parametrize("activation", ["relu6", "relu", "linear"])
@pytest.mark.parametrize("sync", [False, True])
def test_native_depthwise_batchnorm_equals_reference_and_gradients(strides, dilation, channels,
                                                                   activation, sync):
  """Training's depthwise with both batch norms in its passes (depthwise_batchnorm:
  statistics taken as outputs are stored, dz made dy as the gradients read rows)
  against lax's depthwise between the input's scale, shift and activation and
  this layer's batch norm and activation: output, batch statistics and every
  gradient (input, input scale and shift, kernel, scale, bias). On one device, and
  in the train step's shard_map with sync BN (statistics over the whole batch,
  parameter gradients summed over devices). Spread so that ReLU6 clips at both
  ends; 45 and 37 channels reach the 32-, 8- and 1-wide loops."""
  keys = jax.random.split(jax.random.key(0), 6)
  x = 3 * jax.random.normal(keys[0], (8, 9, 8, channels))
  args = (x, 1.5 + 0.5 * jax.random.normal(keys[1], (channels,)),
          jax.random.normal(keys[2], (channels,)),
          jax.random.normal(keys[3], (3, 3, 1, channels)),
          3 + jax.random.normal(keys[4], (channels,)),
          2 + jax.random.normal(keys[5], (channels,)))
  pre = "relu" if activation == "relu6" else "relu6"

  def native(axis_name):
    return lambda x, a, s, w, g, b: depthwise.depthwise_batchnorm(
        x, w, strides, "SAME", dilation, a, s, pre, g, b, 1e-3, activation, axis_name)

  def with_grads(fn):
    def run(*a):
      loss = lambda *a: (lambda o: (jnp.sum(jnp.sin(o[0])), o))(fn(*a))
      return jax.grad(loss, argnums=tuple(range(6)), has_aux=True)(*a)[::-1]
    return run

  reference = functools.partial(conv_batchnorm_reference, strides=strides, dilation=dilation,
                                input_activation=pre, activation=activation)
  want = jax.jit(with_grads(reference))(*args)
  if sync:
    mesh = parallel.create_mesh()
    data, same = P(parallel.DATA), P()
    sharded = jax.jit(jax.shard_map(
        with_grads(native(parallel.DATA)), mesh=mesh, in_specs=(data,) + (same,) * 5,
        out_specs=((data, same, same), (data,) + (same,) * 5)))
    got = sharded(parallel.shard_batch({"x": x}, mesh)["x"],
                  *(parallel.replicate(a, mesh) for a in args[1:]))
  else:
    got = jax.jit(with_grads(native(None)))(*args)
  out = want[0][0]
  if activation == "relu6":
    assert float(jnp.mean(out == 6.0)) > 0.05 and float(jnp.mean(out == 0.0)) > 0.05
  names = ("out", "mean", "var", "dx", "dinput_scale", "dinput_shift", "dkernel", "dscale",
           "dbias")
  for name, a, b in zip(names, jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3, err_msg=name)


# The fused backward pass computes each input row after the last output row that
# reads it, from a ring of the last few rows' dy: strides above 1, VALID padding
# (rows no output reads: 8 rows at stride 2 and 3 leave the last ones out), a
# dilated 5x5 kernel with explicit padding, and rows of 60 columns with 43 channels
# (InteriorRow over many channels, and its 8-wide and scalar loops). Three images of
# 8-13 rows put the workers' split inside an image. 256 and 512 channels: rows, dy and
# taps padded against cache-set conflicts (PaddedStride), through InteriorRow (30
# columns) and DotTaps (7).
@pytest.mark.parametrize("shape, strides, k, dilation, padding", [
    ((3, 8, 9, 11), 2, 3, 1, "VALID"), ((3, 8, 10, 11), 3, 3, 1, "VALID"),
    ((3, 13, 12, 11), 2, 5, 2, ((3, 4), (0, 5))), ((3, 9, 60, 43), 1, 3, 1, "SAME"),
    ((3, 8, 61, 43), 2, 3, 1, "SAME"), ((2, 5, 30, 256), 1, 3, 1, "SAME"),
    ((3, 6, 7, 512), 2, 3, 1, "SAME")])
def test_fused_backward_pass_at_any_geometry(shape, strides, k, dilation, padding):
  """Both batch norms in the depthwise passes (depthwise_batchnorm) against lax's
  depthwise between them, forward and every gradient, at geometries the network
  does not use."""
  keys = jax.random.split(jax.random.key(0), 6)
  c = shape[-1]
  args = (3 * jax.random.normal(keys[0], shape), 1.5 + 0.5 * jax.random.normal(keys[1], (c,)),
          jax.random.normal(keys[2], (c,)), jax.random.normal(keys[3], (k, k, 1, c)),
          3 + jax.random.normal(keys[4], (c,)), 2 + jax.random.normal(keys[5], (c,)))

  def native(x, a, s, w, g, b):
    return depthwise.depthwise_batchnorm(x, w, strides, padding, dilation, a, s, "relu6", g,
                                         b, 1e-3, "relu6")[0]

  def reference(x, a, s, w, g, b):
    y = lax_reference(activate(x * a + s, "relu6"), w, strides, padding, dilation)
    mean = jnp.mean(y, axis=(0, 1, 2))
    var = jnp.mean(y * y, axis=(0, 1, 2)) - mean * mean
    return activate((y - mean) * lax.rsqrt(var + 1e-3) * g + b, "relu6")

  np.testing.assert_allclose(native(*args), reference(*args), atol=1e-4, rtol=1e-4)
  grads = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=range(6)))
  names = ("dx", "dinput_scale", "dinput_shift", "dkernel", "dscale", "dbias")
  for name, a, b in zip(names, grads(native)(*args), grads(reference)(*args), strict=True):
    assert_gradient_close(a, b, rtol=1e-3, err_msg=name)


def fused_operands(hlo: str, target: str):
  """The operand types of each custom call to `target` in lowered StableHLO."""
  return [line.split(": (")[-1].split(") ->")[0].split(", ")
          for line in hlo.splitlines() if f"@{target}" in line or f'"{target}"' in line]


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_inference_folds_batch_norm_into_the_native_depthwise(name):
  """Under running statistics every native depthwise layer computes
  act(conv(pre(x + shift), k * a) + b) in one kernel, taking the previous
  layer's pending shift and activation (the stem's, an expansion's, a
  pointwise's); the logits and every endpoint are those of the unfolded
  conv -> batch norm -> act of depthwise "lax", with any statistics."""
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  folded, unfolded = (get_model(dict(name=name, alpha=0.35, num_classes=7, depthwise_impl=impl))
                      for impl in ("native", "lax"))
  variables = unfolded.init(jax.random.key(1), x)
  keys = iter(jax.random.split(jax.random.key(2), 1000))
  noise = lambda tree, s: jax.tree.map(
      lambda a: a + s * jax.random.normal(next(keys), a.shape), tree)
  variables = {"params": noise(variables["params"], 0.1),
               "batch_stats": jax.tree.map(jnp.abs, noise(variables["batch_stats"], 0.3))}
  infer = jax.jit(folded.apply)
  train = jax.jit(lambda v, x: folded.apply(v, x, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": jax.random.key(3)}))
  fused = fused_operands(infer.lower(variables, x).as_text(),
                         "mobilenet_jax_depthwise_forward_fused")
  assert len(fused) == (13 if name == "mobilenet_v1" else 17)
  empty = "tensor<0xf32>"
  # (x, scale, shift, kernel, bias): each with its input's shift and its own bias.
  assert all(ops[1] == empty and empty not in (ops[2], ops[4]) for ops in fused)
  assert "backward_fused" not in train.lower(variables, x).as_text()
  np.testing.assert_allclose(infer(variables, x), unfolded.apply(variables, x),
                             atol=1e-4, rtol=1e-4)
  ends, ends_ref = (jax.jit(lambda v, x, m=m: m.apply(v, x, endpoints=True))(variables, x)
                    for m in (folded, unfolded))
  assert ends.keys() == ends_ref.keys()
  for key in ends:
    np.testing.assert_allclose(ends[key], ends_ref[key], atol=1e-4, rtol=1e-4, err_msg=key)


# Shallow enough that batch norm sees many values per channel: in the full networks
# at 32 px the last layers normalise over 4 values, and float32 rounding alone
# moves some gradients by percents between any two implementations.
SHALLOW = {"mobilenet_v1": dict(blocks=((64, 1), (128, 2), (128, 1))),
           "mobilenet_v2": dict(blocks=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 1)))}


def train_loss_and_grads(model, variables, x):
  def loss(params):
    logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                  x, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.key(3)})
    return jnp.sum(jnp.sin(logits)), updates
  return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_training_applies_batch_norm_in_the_native_depthwise(name):
  """In training every native depthwise layer (13 in V1, 17 in V2) reads its
  input's batch norm (the batch's scale and shift) and activation through its
  prologue, in the forward pass and the kernel gradient, so the activated tensor
  is never stored, and takes its own batch norm's statistics in the forward pass
  and that batch norm's backward pass in both gradients (depthwise_batchnorm); the
  loss, every parameter's gradient and the new running averages are those of the
  unfused conv -> batch norm -> act with depthwise "lax"."""
  x = jax.random.normal(jax.random.key(0), (2, 33, 33, 3))
  model = get_model(dict(name=name, alpha=0.35, num_classes=7, depthwise_impl="native"))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  hlo = train_loss_and_grads(model, variables, x).lower(variables["params"]).as_text()
  forward = fused_operands(hlo, "mobilenet_jax_depthwise_forward_stats")
  assert len(forward) == (13 if name == "mobilenet_v1" else 17)
  assert not fused_operands(hlo, "mobilenet_jax_depthwise_forward_fused")
  empty = "tensor<0xf32>"
  assert all(empty not in ops for ops in forward)  # (x, scale, shift, kernel)
  # (dz, y, a, b, c1, c2, kernel, x, scale, shift): one pass makes both gradients,
  # taking dy from dz through this layer's batch norm.
  backward = fused_operands(hlo, "mobilenet_jax_depthwise_backward_fused")
  assert len(backward) == len(forward)
  assert all(empty not in ops for ops in backward)
  # Batch norm's sums, one native pass each: (dz, y, a, b) for this layer's backward
  # pass, (x, x, 1, 0) for the statistics of each pending batch norm (every
  # depthwise layer's input) but V2's expansions, whose come from their inputs.
  sums = re.findall(r"@mobilenet_jax_channel_sums\((%[^,]+), (%[^,]+),", hlo)
  assert sum(dz != y for dz, y in sums) == len(forward)
  pending = sum(dz == y for dz, y in sums)
  assert pending >= len(forward) if name == "mobilenet_v1" else pending == 1  # the stem's

  fused, unfused = (get_model(dict(name=name, alpha=0.35, num_classes=7, depthwise_impl=impl,
                                   **SHALLOW[name])) for impl in ("native", "lax"))
  variables = unfused.init(jax.random.key(1), x)
  (loss, stats), grads = train_loss_and_grads(fused, variables, x)(variables["params"])
  (loss_ref, stats_ref), grads_ref = train_loss_and_grads(unfused, variables, x)(
      variables["params"])
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
  for tree, ref in ((grads, grads_ref), (stats, stats_ref)):
    flat, flat_ref = (dict(jax.tree_util.tree_flatten_with_path(t)[0]) for t in (tree, ref))
    assert flat.keys() == flat_ref.keys()
    for key in flat:
      np.testing.assert_allclose(flat[key], flat_ref[key], atol=1e-4, rtol=1e-3,
                                 err_msg=jax.tree_util.keystr(key))


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_folded_inference_keeps_the_compute_dtype(name):
  """Every endpoint in bfloat16, pending activations (the stem's, expansions',
  pointwise outputs') included, as without folding."""
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  ends = {}
  for impl in ("native", "lax"):
    model = get_model(dict(name=name, alpha=0.35, num_classes=7, dtype="bfloat16",
                           depthwise_impl=impl))
    ends[impl] = model.apply(model.init(jax.random.key(1), x), x, endpoints=True)
  assert {k: v.dtype for k, v in ends["native"].items()} == {
      k: jnp.dtype(jnp.bfloat16) for k in ends["lax"]}


# A short V1 keeps this quick; it has stride-2 (Keras-padded) and depth-
# multiplier layers, the cases where the implementations could part; V2's
# "SAME" padding is covered layer by layer above.
@pytest.mark.parametrize("impl", sorted(FAST))
@pytest.mark.slow
def test_whole_model_same_with_either_implementation(impl):
  model_config = dict(name="mobilenet_v1", depth_multiplier=2,
                      blocks=((64, 1), (128, 2), (128, 1)))
  x = jax.random.normal(jax.random.key(0), (2, 33, 33, 3))
  fast = get_model(dict(model_config, alpha=0.35, num_classes=7, depthwise_impl=impl))
  slow = get_model(dict(model_config, alpha=0.35, num_classes=7, depthwise_impl="lax"))
  variables = slow.init(jax.random.key(1), x)
  # Same parameter tree and initial values: checkpoints work with either.
  assert jax.tree.all(jax.tree.map(jnp.array_equal, fast.init(jax.random.key(1), x), variables))
  np.testing.assert_allclose(fast.apply(variables, x), slow.apply(variables, x), atol=1e-4)


@pytest.mark.parametrize("strides, dilation", [(2, 1), (1, 2)])
def test_native_gradients_under_data_parallel_match_one_device(strides, dilation,
                                                               data_parallel_grads):
  """Inside shard_map (the train step's data parallelism) the kernel's gradient is
  summed over devices, as for XLA's convolution; each device's input gradient is its
  own shard's."""
  x = jax.random.normal(jax.random.key(0), (8, 9, 9, 6))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 6))

  def grads(fn, x, kernel):
    return jax.grad(lambda x, w: jnp.sum(jnp.sin(fn(x, w, strides, "SAME", dilation))),
                    argnums=(0, 1))(x, kernel)

  dx, dkernel = data_parallel_grads(functools.partial(grads, depthwise_native), x, kernel)
  dx_ref, dkernel_ref = grads(depthwise_lax, x, kernel)
  np.testing.assert_allclose(dx, dx_ref, atol=1e-5)
  np.testing.assert_allclose(dkernel, dkernel_ref, atol=1e-4)


def test_native_computes_in_float32_for_bfloat16():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4), jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 4), jnp.bfloat16)
  out = depthwise_native(x, kernel, 1, "SAME")
  assert out.dtype == jnp.bfloat16
  ref = depthwise_lax(x.astype(jnp.float32), kernel.astype(jnp.float32), 1, "SAME")
  np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=0.1, rtol=0.02)


def test_auto_picks_native_on_cpu():
  assert jax.default_backend() == "cpu"
  assert depthwise.resolve_impl("auto") == "native"
  assert native.library_path(native.compiler(), native.ARCH_FLAGS[0]).exists()


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
  """A machine where the kernel cannot be built: an empty cache and a CXX that fails."""
  monkeypatch.setenv("MOBILENET_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("CXX", "false")  # exits 1, like a compiler that rejects the source
  native.load.cache_clear()
  native.available.cache_clear()
  yield
  native.load.cache_clear()
  native.available.cache_clear()


def test_without_compiler_auto_falls_back_to_shift(no_compiler, caplog):
  assert depthwise.resolve_impl("auto") == "shift"
  assert "using the pure-JAX shifted form" in caplog.text
  model = get_model(dict(name="mobilenet_v1", alpha=0.25, num_classes=3,
                         blocks=((64, 1),), depthwise_impl="auto"))
  x = jnp.ones((1, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (1, 3)  # the model still runs,
  assert "ffi_call" not in str(jax.make_jaxpr(model.apply)(variables, x))  # in pure JAX


def test_without_compiler_native_is_a_clear_error(no_compiler):
  with pytest.raises(native.NativeUnavailable, match="compiling depthwise_cpu.cc failed"):
    depthwise.resolve_impl("native")
