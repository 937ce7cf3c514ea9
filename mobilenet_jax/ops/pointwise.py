"""1x1 convolution as one matrix product over all pixels (or, for TFLite, as a
convolution): the `pointwise_impl` switch."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilenet_jax.errors import check_choice

POINTWISE_IMPLS = ("dot", "conv")


class Pointwise(nn.Module):
  """1x1 convolution without bias as one matrix product over all pixels.

  The same parameter ("kernel", (1, 1, C_in, C_out), lecun_normal by default) and the
  same result as nn.Conv; XLA's CPU convolution is ~3x slower than its dot
  for 1x1 kernels (docs/design.md), and on GPU/TPU both lower to the same
  matmul. `impl="conv"` computes it as a convolution instead: the TFLite
  converter cannot lower a rank-4 dot_general, and turns the convolution into
  TFLite's own CONV_2D (interop/tf_export.py).
  """
  features: int
  dtype: jnp.dtype = jnp.float32
  impl: str = "dot"
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    check_choice("pointwise_impl", self.impl, POINTWISE_IMPLS)
    kernel = self.param("kernel", self.kernel_init,
                        (1, 1, x.shape[-1], self.features))
    return pointwise(x.astype(self.dtype), kernel.astype(self.dtype), self.impl)


def pointwise(x, kernel, impl: str = "dot"):
  """x (N, H, W, C_in) times kernel (1, 1, C_in, C_out), as `impl` computes it."""
  if impl == "conv":
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # As a 2-D product over all pixels: on a rank-4 dot, XLA's CPU backend
  # transposes the activations for the kernel gradient (4x slower at 112x112x96).
  y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel[0, 0])
  return y.reshape(*x.shape[:-1], kernel.shape[-1])
