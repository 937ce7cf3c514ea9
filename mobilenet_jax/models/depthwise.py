"""Depthwise convolution, with the implementation chosen per backend.

XLA's CPU grouped convolution (`feature_group_count=C`) is an order of
magnitude slower than the same 3x3 depthwise written as k*k shifted
multiply-adds (DESIGN.md; `python -m mobilenet_jax.benchmark` measures it),
while on GPU/TPU the grouped convolution is the fast one. Both give the same
outputs and gradients (tests/depthwise_test.py).
"""

from typing import Any, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mobilenet_jax.errors import check_choice

IMPLS = ("auto", "lax", "shift")
Padding = Union[str, Sequence[Tuple[int, int]]]


def resolve_impl(impl: str) -> str:
  """"auto" -> "shift" on CPU, "lax" elsewhere."""
  check_choice("depthwise_impl", impl, IMPLS)
  if impl == "auto":
    return "shift" if jax.default_backend() == "cpu" else "lax"
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
  _, h, w, _ = x.shape
  ph = explicit_padding(h, kh, strides, padding, 0)
  pw = explicit_padding(w, kw, strides, padding, 1)
  x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  oh = (h + sum(ph) - kh) // strides + 1
  ow = (w + sum(pw) - kw) // strides + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = x[:, i:i + (oh - 1) * strides + 1:strides,
              j:j + (ow - 1) * strides + 1:strides, :] * kernel[i, j, 0]
      out = tap if out is None else out + tap
  return out


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
    fn = depthwise_shift if resolve_impl(self.impl) == "shift" else depthwise_lax
    return fn(x, kernel, self.strides, self.padding)
