"""Depthwise convolution, with the implementation chosen per backend.

XLA's CPU grouped convolution (`feature_group_count=C`) is an order of
magnitude slower than TensorFlow's depthwise kernel. On CPU this project uses a
native kernel (depthwise_cpu.cc, through jax.ffi with a custom VJP), or where no
C++ compiler is found, the same convolution as k*k shifted multiply-adds in pure
JAX; on GPU/TPU XLA's grouped convolution is the fast one
(`python -m mobilenet_jax.tools.benchmark --depthwise_impl=...` measures each). All
give the same outputs and gradients (tests/depthwise_test.py).

Each takes a dilation rate: output-stride 8/16 backbones (TF-slim, DeepLab) set
the last strides to 1 and dilate the depthwise convolutions after them, taps
`rate` apart. The native kernel costs the same at any rate; XLA's grouped
convolution is as slow dilated as not on CPU, and slower dilated on GPUs
(jax-ml/jax#26266).
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mobilenet_jax.errors import ConfigError, check_choice
from mobilenet_jax.ops import native
from mobilenet_jax.ops.batchnorm import (activate, backward_terms, count, moments_from_sums,
                                         passes_gradient)
from mobilenet_jax.ops.sharding import vary_like

IMPLS = ("auto", "lax", "shift", "native")
Padding = Union[str, Sequence[Tuple[int, int]]]


def resolve_impl(impl: str, platform: Optional[str] = None) -> str:
  """"auto" -> "native" on CPU ("shift" if it cannot be built), "lax" elsewhere.

  `platform` is where the program will run: the platform of the mesh's devices
  ("cpu", "gpu", "tpu"), which for an ahead-of-time compile is not the host's.
  Default: JAX's default backend.
  """
  check_choice("depthwise_impl", impl, IMPLS)
  platform = platform or jax.default_backend()
  if impl == "auto":
    if platform != "cpu":
      return "lax"
    return "native" if native.available() else "shift"
  if impl == "native":
    if platform != "cpu":
      raise ConfigError(f"depthwise_impl='native' is a CPU kernel and the program is "
                        f"for {platform}; use 'auto' or 'lax' there.")
    native.load()  # the compiler's error, now, rather than a missing custom call later
  return impl


def check_dilation(dilation) -> int:
  """The dilation rate as an int >= 1, else a ConfigError naming it."""
  if isinstance(dilation, bool) or not isinstance(dilation, (int, np.integer)) or dilation < 1:
    raise ConfigError(f"depthwise dilation={dilation!r} is not valid; it must be an "
                      "integer >= 1 (1: no dilation).")
  return int(dilation)


def dilated_size(k: int, dilation: int) -> int:
  """The window a kernel of k taps, `dilation` apart, spans."""
  return (k - 1) * dilation + 1


def explicit_padding(size: int, k: int, stride: int, padding: Padding, axis: int,
                     dilation: int = 1):
  """(before, after) padding of one spatial axis; "SAME" as TF computes it
  (with dilation, for the dilated window, as TF and lax do)."""
  if padding == "SAME":
    out = -(-size // stride)
    total = max((out - 1) * stride + dilated_size(k, dilation) - size, 0)
    return total // 2, total - total // 2
  if padding == "VALID":
    return 0, 0
  return tuple(padding[axis])


def output_size(size: int, k: int, stride: int, pad: Tuple[int, int], dilation: int = 1) -> int:
  return (size + sum(pad) - dilated_size(k, dilation)) // stride + 1


def spatial_geometry(x_shape, kernel_shape, strides: int, padding: Padding, dilation: int = 1):
  """((pad_top, pad_bottom), (pad_left, pad_right)), (out_h, out_w) for NHWC x."""
  pads = tuple(explicit_padding(x_shape[1 + axis], kernel_shape[axis], strides, padding, axis,
                                dilation) for axis in (0, 1))
  out_hw = tuple(output_size(x_shape[1 + axis], kernel_shape[axis], strides, pads[axis],
                             dilation) for axis in (0, 1))
  return pads, out_hw


def depthwise_lax(x, kernel, strides: int, padding: Padding, dilation: int = 1):
  """XLA's grouped convolution; kernel (k, k, 1, C * m)."""
  dilation = check_dilation(dilation)
  return lax.conv_general_dilated(
      x, kernel, (strides, strides), padding if isinstance(padding, str) else padding,
      rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=x.shape[-1])


def depthwise_shift(x, kernel, strides: int, padding: Padding, dilation: int = 1):
  """The same convolution as k*k strided slices times per-channel weights; with
  dilation the slices start `dilation` apart."""
  dilation = check_dilation(dilation)
  kh, kw, _, features = kernel.shape
  multiplier = features // x.shape[-1]
  if multiplier > 1:  # output channel c*m + j reads input channel c
    x = jnp.repeat(x, multiplier, axis=-1)
  (ph, pw), (oh, ow) = spatial_geometry(x.shape, kernel.shape, strides, padding, dilation)
  x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  out = None
  for i in range(kh):
    for j in range(kw):
      top, left = i * dilation, j * dilation
      tap = x[:, top:top + (oh - 1) * strides + 1:strides,
              left:left + (ow - 1) * strides + 1:strides, :] * kernel[i, j, 0]
      out = tap if out is None else out + tap
  return out


def depthwise_native(x, kernel, strides: int, padding: Padding, dilation: int = 1):
  """The native CPU kernel, in float32 whatever the compute dtype."""
  dilation = check_dilation(dilation)
  (ph, pw), out_hw = spatial_geometry(x.shape, kernel.shape, strides, padding, dilation)
  y = _native_conv(x.astype(jnp.float32), vary_like(kernel.astype(jnp.float32), x),
                   (strides, dilation, ph[0], pw[0]), out_hw)
  return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _native_conv(x, kernel, geometry, out_hw):
  return native.call("DepthwiseForward", (x.shape[0], *out_hw, kernel.shape[-1]), x, kernel,
                     geometry=geometry)


def _native_conv_fwd(x, kernel, geometry, out_hw):
  return _native_conv(x, kernel, geometry, out_hw), (x, kernel)


def _native_conv_bwd(geometry, out_hw, residuals, dy):
  x, kernel = residuals
  dx = native.call("DepthwiseInputGrad", x.shape, dy, kernel, geometry=geometry)
  dkernel = native.call("DepthwiseKernelGrad", kernel.shape, x, dy, geometry=geometry)
  return dx, dkernel


_native_conv.defvjp(_native_conv_fwd, _native_conv_bwd)
# The fused forward pass's activation codes in depthwise_cpu.cc (enum Activation).
ACTIVATION_CODES = {"linear": 0, "relu": 1, "relu6": 2}


def depthwise_bias_act(x, kernel, bias, activation: str, strides: int, padding: Padding,
                       dilation: int = 1, impl: str = "auto", input_shift=None,
                       input_activation: str = "linear", input_scale=None):
  """activation(depthwise(x', kernel) + bias), x' = input_activation(x *
  input_scale + input_shift) if a shift is given, else x; no bias: none.

  The previous layer's batch norm and this layer's, applied in the depthwise
  passes. At inference both are folded into the kernels: this layer's (kernel,
  bias), and the previous layer's shift (its scale is in its kernel). In training
  the previous layer's is the batch's scale and shift, and this layer's follows
  separately. The native kernel applies the input's as it reads rows (in the
  forward pass and again in the kernel gradient, so x' is never stored), and the
  bias and activation before it stores outputs."""
  impl = resolve_impl(impl)
  if impl != "native":
    if input_shift is not None:
      x = activate(x * (1 if input_scale is None else input_scale) + input_shift,
                   input_activation)
    y = IMPL_FNS[impl](x, kernel, strides, padding, dilation)
    return y if bias is None else activate(y + bias, activation)
  dilation = check_dilation(dilation)
  (ph, pw), out_hw = spatial_geometry(x.shape, kernel.shape, strides, padding, dilation)
  f32 = lambda a: vary_like((jnp.zeros((0,)) if a is None else a).astype(jnp.float32), x)
  if input_shift is None:
    input_scale = None
  y = _native_fused(x.astype(jnp.float32), f32(input_scale), f32(input_shift), f32(kernel),
                    f32(bias), input_activation, activation, (strides, dilation, ph[0], pw[0]),
                    out_hw)
  return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _native_fused(x, scale, shift, kernel, bias, input_activation, activation, geometry, out_hw):
  return native.call("DepthwiseForwardFused", (x.shape[0], *out_hw, kernel.shape[-1]), x,
                     scale, shift, kernel, bias, geometry=geometry,
                     input_activation=ACTIVATION_CODES[input_activation],
                     activation=ACTIVATION_CODES[activation])


def _native_fused_fwd(x, scale, shift, kernel, bias, input_activation, activation, geometry,
                      out_hw):
  y = _native_fused(x, scale, shift, kernel, bias, input_activation, activation, geometry,
                    out_hw)
  return y, (x, scale, shift, kernel, bias, y if bias.size else None)  # y: the epilogue's mask


def _native_fused_bwd(input_activation, activation, geometry, out_hw, residuals, dy):
  """The gradient of activation(conv(x', kernel) + bias); the kernel gradient
  reads x through the prologue again, and the input's goes back through it here."""
  x, scale, shift, kernel, bias, y = residuals
  mask = passes_gradient(y, activation) if bias.size else None
  if mask is not None:
    dy = jnp.where(mask, dy, 0.0)
  dbias = jnp.sum(dy, axis=(0, 1, 2)) if bias.size else bias
  if shift.size == 0:
    dx, dkernel = _native_conv_bwd(geometry, out_hw, (x, kernel), dy)
    return dx, scale, shift, dkernel, dbias
  no_grad_prologue = [jnp.zeros((0,), jnp.float32)] * 5
  return (*_grads_through_prologue(x, scale, shift, kernel, dy, no_grad_prologue,
                                   input_activation, "linear", geometry), dbias)


def _grads_through_prologue(x, scale, shift, kernel, dy, grad_prologue, input_activation,
                            activation, geometry):
  """The gradients by x, scale, shift and kernel of conv(act(x * scale + shift),
  kernel) from dy, or from dz with the grad_prologue (y, a, b, c1, c2) of the
  batch norm after the layer: dy = a * dz where activation(y * a + b) passes it, +
  c1 + c2 * y. One native pass makes both gradients: the kernel's reads x through
  the prologue again, the input's goes back through it."""
  attributes = dict(geometry=geometry, input_activation=ACTIVATION_CODES[input_activation],
                    activation=ACTIVATION_CODES[activation])
  grad_prologue = [vary_like(a, x) for a in grad_prologue]
  # The gradient by x (by x' where the activation passes it, times the scale), and
  # the sums by channel of the one by x' (plain and times x): the shift's and the
  # scale's gradients.
  dkernel, dx, sums = native.call(
      "DepthwiseBackwardFused", [kernel.shape, x.shape, (2, x.shape[-1])], dy, *grad_prologue,
      kernel, x, scale, shift, **attributes)
  return dx, (scale if scale.size == 0 else sums[1]), sums[0], dkernel


_native_fused.defvjp(_native_fused_fwd, _native_fused_bwd)


def depthwise_batchnorm(x, kernel, strides: int, padding: Padding, dilation: int,
                        input_scale, input_shift, input_activation: str, scale, bias,
                        epsilon: float, activation: str, axis_name=None):
  """activation(BN(depthwise(x', kernel))) in training, x' = input_activation(x *
  input_scale + input_shift), BN with the batch's statistics (over devices with
  `axis_name`) and parameters scale, bias: (out, mean, var), as
  depthwise_bias_act then batchnorm.BatchNormAct, on the native kernel.

  Both batch norms are applied in the depthwise passes. The forward pass takes
  this layer's statistics while each output row is in cache; the backward pass
  takes batch norm's sums in one pass over (dz, y), and both gradients turn dz
  into dy as they read rows. So neither x' nor dy is stored, and none of batch
  norm's passes reads the output again (docs/performance.md)."""
  dilation = check_dilation(dilation)
  (ph, pw), out_hw = spatial_geometry(x.shape, kernel.shape, strides, padding, dilation)
  f32 = lambda a: vary_like(a.astype(jnp.float32), x)
  out, mean, var = _native_bn(x.astype(jnp.float32), f32(input_scale), f32(input_shift),
                              f32(kernel), f32(scale), f32(bias), input_activation,
                              activation, epsilon, axis_name, (strides, dilation, ph[0], pw[0]),
                              out_hw)
  return out.astype(x.dtype), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10, 11))
def _native_bn(x, input_scale, input_shift, kernel, scale, bias, input_activation, activation,
               epsilon, axis_name, geometry, out_hw):
  return _native_bn_fwd(x, input_scale, input_shift, kernel, scale, bias, input_activation,
                        activation, epsilon, axis_name, geometry, out_hw)[0]


def _native_bn_fwd(x, input_scale, input_shift, kernel, scale, bias, input_activation,
                   activation, epsilon, axis_name, geometry, out_hw):
  c = kernel.shape[-1]
  y, sums = native.call("DepthwiseForwardStats", [(x.shape[0], *out_hw, c), (2, c)], x,
                        input_scale, input_shift, kernel, geometry=geometry,
                        input_activation=ACTIVATION_CODES[input_activation])
  mean, var = moments_from_sums(sums, y.size // c, axis_name)
  inv = lax.rsqrt(var + epsilon)
  a = scale * inv
  b = bias - mean * a
  out = activate(y * a + b, activation)
  return (out, mean, var), (x, input_scale, input_shift, kernel, y, mean, inv, scale, a, b)


def _native_bn_bwd(input_activation, activation, epsilon, axis_name, geometry, out_hw,
                   residuals, cotangents):
  del epsilon, out_hw
  x, input_scale, input_shift, kernel, y, mean, inv, scale, a, b = residuals
  dz = cotangents[0]  # the statistics' own cotangents are zero: only running averages use them
  g = native.call("MaskedChannelSums", (2, y.shape[-1]), dz, y, a, b,
                  activation=ACTIVATION_CODES[activation])
  dscale, dbias, c1, c2 = backward_terms(g[0], g[1], mean, inv, scale, count(y, axis_name),
                                         axis_name)
  grads = _grads_through_prologue(x, input_scale, input_shift, kernel, dz, (y, a, b, c1, c2),
                                  input_activation, activation, geometry)
  return (*grads, dscale, dbias)


_native_bn.defvjp(_native_bn_fwd, _native_bn_bwd)
IMPL_FNS = {"lax": depthwise_lax, "shift": depthwise_shift, "native": depthwise_native}


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution without bias; kernel (k, k, 1, features),
  the parameter nn.Conv(feature_group_count=C) would create. `dilation` > 1
  spaces the taps that far apart (atrous; nn.Conv's kernel_dilation)."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Padding = "SAME"
  impl: str = "auto"
  dtype: Any = jnp.float32
  dilation: int = 1
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.kernel_size, 1, self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    return IMPL_FNS[resolve_impl(self.impl)](x, kernel, self.strides, self.padding,
                                             self.dilation)
