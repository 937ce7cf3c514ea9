"""Full (not depthwise, not 1x1) convolution, with the stem's fast path on CPU.

XLA's CPU convolution handles an image's 3 input channels badly: the MobileNet
stem (3x3, stride 2, 3 -> 32 channels at 224 px) takes ~35 ms forward and ~70 ms
with its kernel gradient at batch 32, a tenth of an inference step for 4% of the
multiply-adds. Computed as the image patches (the native kernel in
depthwise_cpu.cc, one copy of 27 floats per pixel) times the kernel reshaped to
(k*k*C, F), the same convolution is one matrix product forward and one for the
kernel gradient (docs/performance.md). The patches' input gradient, needed only
when something differentiates by the image, is the pure-JAX patches' transpose.

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

# Inputs this narrow (an image: RGB, grayscale) take the patches on CPU.
MAX_PATCH_CHANNELS = 4


def conv_lax(x, kernel, strides: int, padding: Padding, dilation: int = 1, groups: int = 1):
  """XLA's convolution; kernel (k, k, C / groups, F)."""
  return lax.conv_general_dilated(
      x, kernel, (strides, strides), padding, rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def patches_shift(x, kernel_hw, strides: int, padding: Padding, dilation: int = 1):
  """(N, OH, OW, KH*KW*C) patches as strided slices of the padded input, in the
  order of the HWIO kernel's rows: tap (i, j), then channel."""
  (ph, pw), (oh, ow) = spatial_geometry(x.shape, kernel_hw, strides, padding, dilation)
  x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  taps = [x[:, i * dilation:i * dilation + (oh - 1) * strides + 1:strides,
            j * dilation:j * dilation + (ow - 1) * strides + 1:strides, :]
          for i in range(kernel_hw[0]) for j in range(kernel_hw[1])]
  return jnp.concatenate(taps, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def patches_native(x, kernel_hw, strides: int, padding: Padding, dilation: int = 1):
  """patches_shift's result from the native kernel (float32)."""
  (ph, pw), (oh, ow) = spatial_geometry(x.shape, kernel_hw, strides, padding, dilation)
  kh, kw = kernel_hw
  return native.call("Patches", (x.shape[0], oh, ow, kh * kw * x.shape[-1]), x,
                     geometry=(strides, dilation, ph[0], pw[0]), kh=kh, kw=kw)


def _patches_native_fwd(x, kernel_hw, strides, padding, dilation):
  return patches_native(x, kernel_hw, strides, padding, dilation), x


def _patches_native_bwd(kernel_hw, strides, padding, dilation, x, dp):
  _, transpose = jax.vjp(lambda x: patches_shift(x, kernel_hw, strides, padding, dilation), x)
  return transpose(dp)


patches_native.defvjp(_patches_native_fwd, _patches_native_bwd)


def conv_patches(x, kernel, strides: int, padding: Padding, dilation: int = 1):
  """The convolution as native patches times the kernel (patches copied in
  float32, the product in x's dtype)."""
  kh, kw, c, features = kernel.shape
  p = patches_native(x.astype(jnp.float32), (kh, kw), strides, padding, check_dilation(dilation))
  y = jnp.dot(p.astype(x.dtype).reshape(-1, kh * kw * c), kernel.reshape(-1, features))
  return y.reshape(*p.shape[:-1], features)


def uses_patches(in_channels: int, groups: int, depthwise_impl: str) -> bool:
  """Whether `conv` takes the patches: a narrow input, ungrouped, where the
  native CPU kernels are in use (depthwise_impl resolves to "native")."""
  return (groups == 1 and in_channels <= MAX_PATCH_CHANNELS
          and resolve_impl(depthwise_impl) == "native")


def conv(x, kernel, strides: int, padding: Padding, dilation: int = 1, groups: int = 1,
         depthwise_impl: str = "auto"):
  if uses_patches(x.shape[-1], groups, depthwise_impl):
    return conv_patches(x, kernel, strides, padding, dilation)
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
