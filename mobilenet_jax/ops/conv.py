"""Full (not depthwise, not 1x1) convolution, with the stem's fast path on CPU.

XLA's CPU convolution handles an image's 3 input channels badly: the MobileNet
stem (3x3, stride 2, 3 -> 32 channels at 224 px) takes ~35 ms forward and ~70 ms
with its kernel gradient at batch 32, a tenth of an inference step for 4% of the
multiply-adds. On CPU a narrow input's convolution runs in the native kernel
(depthwise_cpu.cc, `NarrowConv`): each output pixel's features summed in vector
registers, forward and for the kernel gradient, with no copy of the image patches
(docs/performance.md). The input gradient, needed only when something
differentiates by the image, is the pure-JAX patches' transpose of dy times the
kernel.

`conv` keeps XLA's convolution for wide inputs (the "Conv MobileNet" ablation's
full convolutions), on GPU/TPU, and wherever the native kernels are not used.
tests/conv_test.py checks outputs and gradients against lax.
"""

import functools
from typing import Any, Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mobilenet_jax.ops import native
from mobilenet_jax.ops.depthwise import Padding, check_dilation, resolve_impl, spatial_geometry
from mobilenet_jax.ops.sharding import vary_like

# Inputs this narrow (an image: RGB, grayscale) take the native kernel on CPU.
MAX_NATIVE_CHANNELS = 4


def conv_lax(x, kernel, strides: int, padding: Padding, dilation: int = 1, groups: int = 1):
  """XLA's convolution; kernel (k, k, C / groups, F)."""
  return lax.conv_general_dilated(
      x, kernel, (strides, strides), padding, rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def patches_shift(x, kernel_hw, strides: int, padding: Padding, dilation: int = 1):
  """(N, OH, OW, KH*KW*C) patches as strided slices of the padded input, in the
  order of the HWIO kernel's rows: tap (i, j), then channel (the native
  convolution's input gradient is their transpose)."""
  (ph, pw), (oh, ow) = spatial_geometry(x.shape, kernel_hw, strides, padding, dilation)
  x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  taps = [x[:, i * dilation:i * dilation + (oh - 1) * strides + 1:strides,
            j * dilation:j * dilation + (ow - 1) * strides + 1:strides, :]
          for i in range(kernel_hw[0]) for j in range(kernel_hw[1])]
  return jnp.concatenate(taps, axis=-1)


def narrow_geometry(x, kernel, strides: int, padding: Padding, dilation: int):
  """(output shape, the native kernels' geometry) of x convolved with kernel."""
  (ph, pw), (oh, ow) = spatial_geometry(x.shape, kernel.shape, strides, padding, dilation)
  return (x.shape[0], oh, ow, kernel.shape[-1]), (strides, dilation, ph[0], pw[0])


def conv_native(x, kernel, strides: int, padding: Padding, dilation: int = 1):
  """The convolution of a narrow input by the native kernel (in float32, the
  result in x's dtype)."""
  # A replicated kernel takes x's device axes, so that its gradient can (vary_like).
  return _conv_native(x, vary_like(kernel, x), strides, padding, check_dilation(dilation))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_native(x, kernel, strides: int, padding: Padding, dilation: int):
  shape, geometry = narrow_geometry(x, kernel, strides, padding, dilation)
  y = native.call("NarrowConvForward", shape, x.astype(jnp.float32),
                  kernel.astype(jnp.float32), geometry=geometry)
  return y.astype(x.dtype)


def _conv_native_fwd(x, kernel, strides, padding, dilation):
  return _conv_native(x, kernel, strides, padding, dilation), (x, kernel)


def _conv_native_bwd(strides, padding, dilation, residuals, dy):
  x, kernel = residuals
  shape, geometry = narrow_geometry(x, kernel, strides, padding, dilation)
  dk = native.call("NarrowConvKernelGrad", kernel.shape, x.astype(jnp.float32),
                   dy.astype(jnp.float32), geometry=geometry)
  # dx: dy times the kernel's rows, scattered back as the patches' transpose
  # (XLA drops it where nothing differentiates by x: the image).
  _, transpose = jax.vjp(lambda x: patches_shift(x, kernel.shape[:2], strides, padding,
                                                 dilation), x)
  (dx,) = transpose(jnp.dot(dy, kernel.reshape(-1, shape[-1]).T))
  return dx, dk.astype(kernel.dtype)


_conv_native.defvjp(_conv_native_fwd, _conv_native_bwd)


def uses_native(in_channels: int, groups: int, depthwise_impl: str) -> bool:
  """Whether `conv` takes the native kernel: a narrow input, ungrouped, where the
  native CPU kernels are in use (depthwise_impl resolves to "native")."""
  return (groups == 1 and in_channels <= MAX_NATIVE_CHANNELS
          and resolve_impl(depthwise_impl) == "native")


def conv(x, kernel, strides: int, padding: Padding, dilation: int = 1, groups: int = 1,
         depthwise_impl: str = "auto"):
  if uses_native(x.shape[-1], groups, depthwise_impl):
    return conv_native(x, kernel, strides, padding, dilation)
  return conv_lax(x, kernel, strides, padding, dilation, groups)


class KernelParam(nn.Module):
  """A kernel parameter by itself, named as a convolution's (".../conv/kernel"),
  for layers that compute the convolution from a folded or rounded kernel."""
  shape: Tuple[int, ...]
  init: Callable

  @nn.compact
  def __call__(self):
    return self.param("kernel", self.init, self.shape)


class Conv(nn.Module):
  """k x k convolution without bias: nn.Conv's parameter ("kernel",
  (k, k, C / groups, features)) and result, computed by `conv`."""
  features: int
  kernel_size: int
  strides: int = 1
  padding: Padding = "SAME"
  dilation: int = 1
  groups: int = 1
  depthwise_impl: str = "auto"
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.kernel_size, x.shape[-1] // self.groups,
                         self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    return conv(x, kernel, self.strides, self.padding, self.dilation, self.groups,
                self.depthwise_impl)
