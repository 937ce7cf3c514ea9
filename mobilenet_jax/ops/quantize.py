"""int8 as TFLite computes it, simulated in float: quantization-aware training
(QAT) and post-training quantization (PTQ) of the networks' layers.

What is quantized, following TFLite's quantization spec and Jacob et al. 2018
("Quantization and training of neural networks for efficient
integer-arithmetic-only inference"):
  - weights: each convolution's kernel with its batch norm folded in
    (w * gamma / sqrt(var + eps)), and the classifier's kernel; symmetric int8
    in [-127, 127], one scale per output channel ("per_channel", TFLite's
    default) or one per tensor ("per_tensor");
  - activations (optional): every tensor TFLite keeps in int8 (the input, each
    conv + BN + activation output, each residual sum, the pooled features and
    the logits), asymmetric int8 [-128, 127] with a zero point and one range
    per tensor: [0, 6] after ReLU6 (the clip range is the quantization range),
    otherwise the running min/max seen in training (an average with the batch
    norm's momentum, from the first batch on) or, for PTQ, over the
    calibration batches.
In training, a conv + BN uses the batch's statistics on top of a kernel folded
with the running ones (`conv(x, q(w * f)) / f`, f = gamma / sqrt(var + eps)),
as PyTorch's QAT ConvBn does; at evaluation the folded kernel and bias are
what TFLite runs. Gradients pass the rounding straight through (STE) and stop
outside an activation's range.

The arithmetic (calibration, scale and zero point, rounding, dequantization)
is Qwix's (`qwix._src.core.qarray`, the functions its own QAT providers use);
what is quantized where is this module's. tests/quantize_test.py checks it.
"""

import dataclasses
from typing import Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mobilenet_jax.ops import batchnorm
from mobilenet_jax.ops.batchnorm import BatchNormVariables, activate
from mobilenet_jax.ops.conv import KernelParam

WEIGHTS = ("per_channel", "per_tensor")
RANGE_VARIABLES = ("min", "max", "count")  # an activation's range in batch_stats
QUANT_MODULE = "quant"  # every activation quantizer's name ends with this


@dataclasses.dataclass(frozen=True)
class Quantization:
  """How a network is quantized (None where a network is float)."""
  weights: str = "per_channel"  # a WEIGHTS name
  activations: bool = True
  # PTQ: activation ranges become the min/max over the batches seen with
  # mutable batch_stats (train=False), instead of QAT's running average.
  calibrating: bool = False


def qarray():
  """Qwix's quantization arithmetic, imported where quantization is used
  (float runs do not need Qwix installed)."""
  from qwix._src.core import qarray as lib
  return lib


def _narrow_absmax() -> str:
  """Qwix's calibration method for TFLite's weights: symmetric in [-127, 127].
  Qwix maps |x| <= absmax onto [-b, b] with b its symmetric bound (127.5 in
  recent versions, 127 in older ones); scaling absmax by b / 127 makes the
  scale absmax / 127, as TFLite's."""
  from qwix._src.core import numerics
  return f"absmax,{numerics.get_symmetric_bound(jnp.int8) / 127.0!r}"


def weight_scale(w: jax.Array, weights: str) -> jax.Array:
  """The int8 scale of kernel `w` (output channels last): one per output
  channel, or one for the tensor (keeping w's rank)."""
  lib = qarray()
  how = lib.HowToQuantize(qtype=jnp.int8, calibration_method=_narrow_absmax(),
                          channelwise_axes=(w.ndim - 1,) if weights == "per_channel" else ())
  scale, _ = lib.compute_scale_zero_point(lib.calibrate(w, how), jnp.int8)
  return scale


def fake_quant_weights(w: jax.Array, weights: str) -> jax.Array:
  """`w` rounded to its int8 grid; the gradient passes straight through."""
  lib = qarray()
  scale = lax.stop_gradient(weight_scale(w, weights))
  q = lib.dequantize(lib.quantize_with_scale_zero_point(w, jnp.int8, scale, None))
  return w + lax.stop_gradient(q - w)


def fake_quant_activations(x: jax.Array, low, high) -> jax.Array:
  """`x` through asymmetric int8 with range [low, high] (widened to hold 0,
  so that zero is exact); the gradient passes inside the range, stops outside."""
  lib = qarray()
  shape = (1,) * x.ndim
  calibration = {"min": jnp.minimum(jnp.reshape(low, shape), 0.0).astype(x.dtype),
                 "max": jnp.maximum(jnp.reshape(high, shape), 0.0).astype(x.dtype)}
  calibration = jax.tree.map(lax.stop_gradient, calibration)
  scale, zero_point = lib.compute_scale_zero_point(calibration, jnp.int8)
  q = lib.dequantize(lib.quantize_with_scale_zero_point(x, jnp.int8, scale, zero_point))
  inside = lib.clip_to_calibration(x, calibration, {})
  return inside + lax.stop_gradient(q - inside)


class ActQuant(nn.Module):
  """Fake-quantizes one activation tensor (identity where activations stay float).

  `activation` is what produced it: after ReLU6 the range is [0, 6]; otherwise
  the range is kept in batch_stats ("min", "max", and "count", the batches
  averaged so far) and updated in training (and while calibrating).
  """
  quantization: Quantization
  momentum: float
  activation: str = "linear"
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    q = self.quantization
    if not q.activations:
      return x
    if self.activation == "relu6":
      return fake_quant_activations(x, 0.0, 6.0)
    low = self.variable("batch_stats", "min", jnp.zeros, (), jnp.float32)
    high = self.variable("batch_stats", "max", jnp.zeros, (), jnp.float32)
    count = self.variable("batch_stats", "count", jnp.zeros, (), jnp.float32)
    if (train or q.calibrating) and not self.is_initializing():
      x_low, x_high = jnp.min(x).astype(jnp.float32), jnp.max(x).astype(jnp.float32)
      if self.axis_name is not None:
        x_low, x_high = lax.pmin(x_low, self.axis_name), lax.pmax(x_high, self.axis_name)
      x_low, x_high = lax.stop_gradient(x_low), lax.stop_gradient(x_high)
      first = count.value == 0
      if q.calibrating:
        new_low, new_high = jnp.minimum(low.value, x_low), jnp.maximum(high.value, x_high)
      else:
        m = self.momentum
        new_low = m * low.value + (1 - m) * x_low
        new_high = m * high.value + (1 - m) * x_high
      low.value = jnp.where(first, x_low, new_low)
      high.value = jnp.where(first, x_high, new_high)
      count.value = count.value + 1
    return fake_quant_activations(x, low.value, high.value)


def conv_bn(x, train: bool, conv: Callable, *, features: int, kernel_size: int,
            groups: int, activation: str, quantization: Quantization, momentum: float,
            epsilon: float, kernel_init: Callable, initializing: bool,
            frozen: bool = False, axis_name: Optional[str] = None, dtype=jnp.float32):
  """act(BN(conv(x, kernel))) with the batch norm folded into a quantized
  kernel, then the output quantized. Called inside a compact module
  (models/layers.ConvBN, which gives `conv`), it makes that module's variables
  "conv/kernel", "bn/..." (as the float layer's) and "quant/..." (the output's
  range). At evaluation it computes what TFLite's int8 CONV_2D or
  DEPTHWISE_CONV_2D with a fused activation does."""
  k, q = kernel_size, quantization
  kernel = KernelParam((k, k, x.shape[-1] // groups, features), kernel_init, name="conv")()
  scale, bias, mean, var = BatchNormVariables(features, name="bn")()
  fold, folded_bias = batchnorm.fold(scale, bias, mean.value, var.value, epsilon)
  kernel = fake_quant_weights(kernel * fold, q.weights).astype(dtype)
  x = x.astype(dtype)
  if train and not frozen:
    y = conv(x, kernel).astype(jnp.float32) / fold
    axes = tuple(range(y.ndim - 1))
    batch_mean, batch_sq = jnp.mean(y, axes), jnp.mean(y * y, axes)
    if axis_name is not None:
      batch_mean, batch_sq = lax.pmean(batch_mean, axis_name), lax.pmean(batch_sq, axis_name)
    batch_var = batch_sq - batch_mean * batch_mean
    if not initializing:
      mean.value = momentum * mean.value + (1 - momentum) * lax.stop_gradient(batch_mean)
      var.value = momentum * var.value + (1 - momentum) * lax.stop_gradient(batch_var)
    y = (y - batch_mean) * (scale * lax.rsqrt(batch_var + epsilon)) + bias
  else:
    y = conv(x, kernel).astype(jnp.float32) + folded_bias
  y = activate(y, activation).astype(dtype)
  return ActQuant(q, momentum, activation, axis_name, name=QUANT_MODULE)(y, train)


class QuantDense(nn.Module):
  """A dense layer with its kernel quantized (output channels last) and its
  output (the logits) quantized; flax.linen.Dense's variables."""
  features: int
  quantization: Quantization
  momentum: float
  kernel_init: Callable
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    kernel = fake_quant_weights(kernel, self.quantization.weights)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)
    return ActQuant(self.quantization, self.momentum, axis_name=self.axis_name,
                    name=QUANT_MODULE)(y, train)


def is_range(path: str) -> bool:
  """Whether a flattened variable path ("block_0/add/quant/min") is an
  activation range: present only in quantized networks."""
  parts = path.split("/")
  return (len(parts) >= 2 and parts[-2].endswith(QUANT_MODULE)
          and parts[-1] in RANGE_VARIABLES)


def rounded_float_variables(variables: dict, weights: str, epsilon: float) -> dict:
  """Variables of the float network that make it compute the quantized one's
  evaluation up to the activations' rounding: each conv's kernel is its
  folded, int8-rounded kernel and its batch norm passes it through with the
  folded bias (scale 1, mean 0, variance 1 - epsilon); the classifier's kernel
  is rounded. This is what a QAT run gives TFLite's converter, whose own
  folding then changes nothing and whose weight scales are QAT's."""
  params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  stats = {p: v for p, v in flax.traverse_util.flatten_dict(
      variables["batch_stats"], sep="/").items() if not is_range(p)}
  for path in [p for p in params if p.endswith("conv/kernel")]:
    bn = path[:-len("conv/kernel")] + "bn/"
    fold, params[bn + "bias"] = batchnorm.fold(params[bn + "scale"], params[bn + "bias"],
                                               stats[bn + "mean"], stats[bn + "var"], epsilon)
    params[path] = fake_quant_weights(params[path] * fold, weights)
    params[bn + "scale"] = jnp.ones_like(fold)
    stats[bn + "mean"] = jnp.zeros_like(fold)
    stats[bn + "var"] = jnp.full_like(fold, 1.0 - epsilon)
  if "classifier/kernel" in params:
    params["classifier/kernel"] = fake_quant_weights(params["classifier/kernel"], weights)
  return {"params": flax.traverse_util.unflatten_dict(params, sep="/"),
          "batch_stats": flax.traverse_util.unflatten_dict(stats, sep="/")}
