"""Depthwise convolution, with the implementation chosen per backend.

XLA's CPU grouped convolution (`feature_group_count=C`) is an order of
magnitude slower than TensorFlow's depthwise kernel. On CPU this project uses a
native kernel (depthwise_cpu.cc, through jax.ffi with a custom VJP), or where no
C++ compiler is found, the same convolution as k*k shifted multiply-adds in pure
JAX; on GPU/TPU XLA's grouped convolution is the fast one
(`python -m mobilenet_jax.benchmark --depthwise_impl=...` measures each). All
give the same outputs and gradients (tests/depthwise_test.py).
"""

import functools
from typing import Any, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mobilenet_jax.errors import check_choice
from mobilenet_jax.ops import native
from mobilenet_jax.ops.sharding import vary_like

IMPLS = ("auto", "lax", "shift", "native")
Padding = Union[str, Sequence[Tuple[int, int]]]


def resolve_impl(impl: str) -> str:
  """"auto" -> "native" on CPU ("shift" if it cannot be built), "lax" elsewhere."""
  check_choice("depthwise_impl", impl, IMPLS)
  if impl == "auto":
    if jax.default_backend() != "cpu":
      return "lax"
    return "native" if native.available() else "shift"
  if impl == "native":
    native.load()  # the compiler's error, now, rather than a missing custom call later
  return impl


def explicit_padding(size: int, k: int, stride: int, padding: Padding, axis: int):
  """(before, after) padding of one spatial axis; "SAME" as TF computes it."""
  if padding == "SAME":
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2
  if padding == "VALID":
    return 0, 0
  return tuple(padding[axis])


def output_size(size: int, k: int, stride: int, pad: Tuple[int, int]) -> int:
  return (size + sum(pad) - k) // stride + 1


def spatial_geometry(x_shape, kernel_shape, strides: int, padding: Padding):
  """((pad_top, pad_bottom), (pad_left, pad_right)), (out_h, out_w) for NHWC x."""
  pads = tuple(explicit_padding(x_shape[1 + axis], kernel_shape[axis], strides, padding, axis)
               for axis in (0, 1))
  out_hw = tuple(output_size(x_shape[1 + axis], kernel_shape[axis], strides, pads[axis])
                 for axis in (0, 1))
  return pads, out_hw


def depthwise_lax(x, kernel, strides: int, padding: Padding):
  """XLA's grouped convolution; kernel (k, k, 1, C * m)."""
  return lax.conv_general_dilated(
      x, kernel, (strides, strides), padding if isinstance(padding, str) else padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def depthwise_shift(x, kernel, strides: int, padding: Padding):
  """The same convolution as k*k strided slices times per-channel weights."""
  kh, kw, _, features = kernel.shape
  multiplier = features // x.shape[-1]
  if multiplier > 1:  # output channel c*m + j reads input channel c
    x = jnp.repeat(x, multiplier, axis=-1)
  (ph, pw), (oh, ow) = spatial_geometry(x.shape, kernel.shape, strides, padding)
  x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = x[:, i:i + (oh - 1) * strides + 1:strides,
              j:j + (ow - 1) * strides + 1:strides, :] * kernel[i, j, 0]
      out = tap if out is None else out + tap
  return out


def depthwise_native(x, kernel, strides: int, padding: Padding):
  """The native CPU kernel, in float32 whatever the compute dtype."""
  native.load()  # builds once per machine, registers once per process
  (ph, pw), out_hw = spatial_geometry(x.shape, kernel.shape, strides, padding)
  y = _native_conv(x.astype(jnp.float32), vary_like(kernel.astype(jnp.float32), x),
                   (strides, ph[0], pw[0]), out_hw)
  return y.astype(x.dtype)


def _ffi(target: str, shape, a, b, geometry):
  stride, pad_top, pad_left = (np.int64(v) for v in geometry)
  result = jax.ShapeDtypeStruct(shape, jnp.float32)
  out = jax.ffi.ffi_call(native.TARGETS[target], result, vmap_method="sequential")(
      a, b, stride=stride, pad_top=pad_top, pad_left=pad_left)
  return vary_like(out, a)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _native_conv(x, kernel, geometry, out_hw):
  return _ffi("DepthwiseForward", (x.shape[0], *out_hw, kernel.shape[-1]), x, kernel, geometry)


def _native_conv_fwd(x, kernel, geometry, out_hw):
  return _native_conv(x, kernel, geometry, out_hw), (x, kernel)


def _native_conv_bwd(geometry, out_hw, residuals, dy):
  x, kernel = residuals
  dx = _ffi("DepthwiseInputGrad", x.shape, dy, kernel, geometry)
  dkernel = _ffi("DepthwiseKernelGrad", kernel.shape, x, dy, geometry)
  return dx, dkernel


_native_conv.defvjp(_native_conv_fwd, _native_conv_bwd)
IMPL_FNS = {"lax": depthwise_lax, "shift": depthwise_shift, "native": depthwise_native}


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution without bias; kernel (k, k, 1, features),
  the parameter nn.Conv(feature_group_count=C) would create."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Padding = "SAME"
  impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel_size, self.kernel_size, 1, self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    return IMPL_FNS[resolve_impl(self.impl)](x, kernel, self.strides, self.padding)
