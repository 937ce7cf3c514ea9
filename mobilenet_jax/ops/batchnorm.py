"""Batch norm fused with the activation that follows it, with a hand-written VJP.

The same computation, variables and running averages as `flax.linen.BatchNorm`
(statistics over all but the channel axis, biased variance E[x^2] - E[x]^2 in
float32, `ra = momentum * ra + (1 - momentum) * batch`), then ReLU6, ReLU or
nothing. Autodiff of that graph makes XLA keep and re-read more intermediates
than the gradient needs; written by hand, the backward pass is one reduction over
(dy, x) and one elementwise pass: at 32x112x112x96 forward and backward take
60 ms instead of 98 ms, and in the whole MobileNetV2 train step batch norm cost
0.68 s of 2.4 s (docs/performance.md). tests/batchnorm_test.py checks outputs,
gradients and running averages against flax, with and without a device axis.
"""

import functools
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mobilenet_jax.ops import native
from mobilenet_jax.ops.sharding import vary_like

ACTIVATIONS = ("relu6", "relu", "linear")
BATCHNORM_IMPLS = ("fused", "flax")  # this module, or flax.linen.BatchNorm


def activate(y, activation: str):
  if activation == "relu6":
    return jnp.clip(y, 0.0, 6.0)
  if activation == "relu":
    return jnp.maximum(y, 0.0)
  return y


def passes_gradient(out, activation: str):
  """Where the activation's derivative is 1 (0 elsewhere), from its output: the
  derivative jax.nn.relu6 and jax.nn.relu use (0 at the kinks)."""
  if activation == "relu6":
    return (out > 0.0) & (out < 6.0)
  if activation == "relu":
    return out > 0.0
  return None


@flax.struct.dataclass
class PreActivation:
  """A layer's output with its batch norm and activation pending:
  act(raw * scale + shift). At inference batch norm is folded into the layer's
  kernel and only the shift is left (scale None); in training scale and shift come
  from the batch's statistics. The native depthwise layer that reads it applies
  them as it loads rows, saving a pass over the tensor (and, in training, keeping
  the activated tensor out of memory: its gradients read the rows the same way).
  Anything else takes `value(x)`, which XLA computes only where it is used."""
  raw: jax.Array
  shift: jax.Array
  activation: str = flax.struct.field(pytree_node=False)
  scale: Optional[jax.Array] = None

  @property
  def shape(self):
    return self.raw.shape

  def value(self):
    x = self.raw if self.scale is None else self.raw.astype(jnp.float32) * self.scale
    return activate(x + self.shift, self.activation).astype(self.raw.dtype)


def value(x):
  """The tensor `x` stands for: x, or a PreActivation's activated value."""
  return x.value() if isinstance(x, PreActivation) else x


def _sum(x, axis_name=None):
  """Sum over all but the channel axis, and over devices with sync BN."""
  s = jnp.sum(x, axis=tuple(range(x.ndim - 1)))
  return s if axis_name is None else lax.psum(s, axis_name)


def count(x, axis_name=None):
  """How many values batch norm's statistics of x are over (on all devices)."""
  n = x.size // x.shape[-1]
  return n if axis_name is None else lax.psum(n, axis_name)


def moments(x, axis_name=None):
  """The batch's mean and biased variance per channel, as flax computes them."""
  n = count(x, axis_name)
  mean = _sum(x, axis_name) / n
  return mean, jnp.maximum(_sum(x * x, axis_name) / n - mean * mean, 0.0)


@jax.custom_vjp
def native_sums(x):
  """(2, C): this device's sums of x and of x * x over all but the channel axis,
  in one native pass (XLA makes each its own pass); CPU, native kernels only."""
  c = x.shape[-1]
  ones, zeros = vary_like(jnp.ones((c,)), x), vary_like(jnp.zeros((c,)), x)
  return native.call("MaskedChannelSums", (2, c), x, x, ones, zeros, activation=0)


native_sums.defvjp(lambda x: (native_sums(x), x), lambda x, ds: (ds[0] + 2 * x * ds[1],))


def moments_from_sums(sums, n, axis_name=None):
  """moments() from this device's sums (2, C) of x and x * x over n values."""
  if axis_name is not None:
    sums, n = lax.psum(sums, axis_name), lax.psum(n, axis_name)
  mean = sums[0] / n
  return mean, jnp.maximum(sums[1] / n - mean * mean, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _normalize(x, scale, bias, epsilon, activation, axis_name):
  return _normalize_fwd(x, scale, bias, epsilon, activation, axis_name)[0]


def _normalize_fwd(x, scale, bias, epsilon, activation, axis_name):
  mean, var = moments(x, axis_name)
  inv = lax.rsqrt(var + epsilon)
  a = scale * inv
  out = activate(x * a + (bias - mean * a), activation)
  return (out, mean, var), (x, out, mean, inv, scale)


def _normalize_bwd(epsilon, activation, axis_name, residuals, cotangents):
  del epsilon
  x, out, mean, inv, scale = residuals
  dy = cotangents[0]  # the statistics' own cotangents are zero: only running averages use them
  mask = passes_gradient(out, activation)
  if mask is not None:
    dy = jnp.where(mask, dy, 0.0)
  dscale, dbias, c1, c2 = backward_terms(_sum(dy), _sum(dy * x), mean, inv, scale,
                                         count(x, axis_name), axis_name)
  return scale * inv * dy + c1 + c2 * x, dscale, dbias


def backward_terms(g1, g2, mean, inv, scale, n, axis_name=None):
  """Batch norm's backward pass from this device's sums g1 = sum(dy), g2 = sum(dy *
  x) (dy: the gradient by the normalized output, where the activation passes it):
  the scale's and bias's gradients, and c1, c2 with the input's gradient
  dx = a * dy + c1 + c2 * x = a * (dy - mean(dy) - xhat * mean(dy * xhat)),
  a = scale * inv. n counts the values on all devices."""
  # This device's sums give the parameters' gradients (summed over devices by the
  # cast's transpose); the input's gradient needs them over all devices.
  dscale = inv * (g2 - mean * g1)  # sum(dy * xhat)
  if axis_name is not None:
    g1_all, g2_all = lax.psum(g1, axis_name), lax.psum(g2, axis_name)
    dscale_all = inv * (g2_all - mean * g1_all)
  else:
    g1_all, dscale_all = g1, dscale
  a = scale * inv
  c2 = -a * inv * dscale_all / n
  c1 = -a * g1_all / n - c2 * mean
  return dscale, g1, c1, c2


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def declare_variables(module: nn.Module, features: int):
  """flax.linen.BatchNorm's variables in `module` (inside its compact method):
  params scale, bias; batch_stats mean, var (variables, for updating)."""
  return (module.param("scale", nn.initializers.ones, (features,)),
          module.param("bias", nn.initializers.zeros, (features,)),
          module.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32),
          module.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32))


class BatchNormVariables(nn.Module):
  """The variables alone (".../bn/scale", ".../bn/mean", ...), for layers that
  fold batch norm into their convolution (inference, quantization)."""
  features: int

  @nn.compact
  def __call__(self):
    return declare_variables(self, self.features)


def fold(scale, bias, mean, var, epsilon):
  """(a, b) with BN(y) = y * a + b under running statistics: a scales the
  convolution's kernel, b becomes its bias."""
  a = scale * lax.rsqrt(var + epsilon)
  return a, bias - mean * a


class BatchNormAct(nn.Module):
  """act(BatchNorm(x)); variables named as flax.linen.BatchNorm's."""
  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-3
  axis_name: Optional[str] = None
  activation: str = "linear"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, defer: bool = False, normalize=None, sums=None):
    """act(BatchNorm(x)); with `defer` in training, the PreActivation that stands
    for it (its consumer, the native depthwise layer, applies it): the statistics
    (both sums in one native pass) and running averages are the same, and autodiff
    takes the gradient through them. `normalize(scale, bias) -> (out, mean, var)`,
    in training, is a layer that normalizes its own output in its passes (the
    native depthwise layer); x then only gives the channels and device axes.
    `sums`, with `defer`: x's sums as native_sums gives them, computed already."""
    scale, bias, ra_mean, ra_var = declare_variables(self, x.shape[-1])
    x32 = x.astype(jnp.float32)
    if self.use_running_average:
      a, b = fold(scale, bias, ra_mean.value, ra_var.value, self.epsilon)
      return activate(x32 * a + b, self.activation).astype(self.dtype)
    scale, bias = vary_like(scale, x32), vary_like(bias, x32)
    if defer:
      sums = native_sums(x32) if sums is None else sums
      mean, var = moments_from_sums(sums, count(x32), self.axis_name)
      a, b = fold(scale, bias, mean, var, self.epsilon)
      out = PreActivation(x.astype(self.dtype), b, self.activation, scale=a)
    else:
      if normalize is None:
        normalize = lambda scale, bias: _normalize(x32, scale, bias, self.epsilon,
                                                   self.activation, self.axis_name)
      out, mean, var = normalize(scale, bias)
      out = out.astype(self.dtype)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return out
