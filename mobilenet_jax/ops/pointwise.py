"""1x1 convolution as one matrix product over all pixels (or, for TFLite, as a
convolution): the `pointwise_impl` switch.

On CPU, where the native kernels are in use, a product with many pixels and few
output features takes its kernel gradient from the native kernel
(depthwise_cpu.cc, `PointwiseKernelGrad`): XLA's dot runs these long, thin
contractions at a third to a quarter of the speed the kernel's register tiles reach
(docs/performance.md, "AMD EPYC, Zen 4"). The forward product and the input
gradient stay XLA's. tests/pointwise_test.py checks both gradients against XLA's.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilenet_jax.errors import check_choice
from mobilenet_jax.ops import native
from mobilenet_jax.ops.depthwise import resolve_impl
from mobilenet_jax.ops.sharding import vary_like

POINTWISE_IMPLS = ("dot", "conv")
# The kernel gradients the native kernel takes. With up to 64 output features it was
# faster than XLA's dot, and with 96 or more not; in the train step, taking those
# of 28x28 at batch 32 (25,088 pixels) too gained nothing measurable
# (docs/performance.md, "AMD EPYC, Zen 4").
NATIVE_GRAD_MIN_PIXELS = 50_000
NATIVE_GRAD_MAX_FEATURES = 64


class Pointwise(nn.Module):
  """1x1 convolution without bias as one matrix product over all pixels.

  The same parameter ("kernel", (1, 1, C_in, C_out), lecun_normal by default) and the
  same result as nn.Conv; XLA's CPU convolution is ~3x slower than its dot
  for 1x1 kernels (docs/design.md), and on GPU/TPU both lower to the same
  matmul. `impl="conv"` computes it as a convolution instead: the TFLite
  converter cannot lower a rank-4 dot_general, and turns the convolution into
  TFLite's own CONV_2D (interop/tf_export.py). `depthwise_impl` says whether the
  native CPU kernels are in use (as for the depthwise and stem convolutions).
  """
  features: int
  dtype: jnp.dtype = jnp.float32
  impl: str = "dot"
  kernel_init: Callable = nn.initializers.lecun_normal()
  depthwise_impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    check_choice("pointwise_impl", self.impl, POINTWISE_IMPLS)
    kernel = self.param("kernel", self.kernel_init,
                        (1, 1, x.shape[-1], self.features))
    return pointwise(x.astype(self.dtype), kernel.astype(self.dtype), self.impl,
                     self.depthwise_impl)


def uses_native_grad(pixels: int, features: int, dtype, depthwise_impl: str) -> bool:
  """Whether the product's kernel gradient is the native kernel's."""
  return (pixels >= NATIVE_GRAD_MIN_PIXELS and features <= NATIVE_GRAD_MAX_FEATURES
          and dtype == jnp.float32 and resolve_impl(depthwise_impl) == "native")


def pointwise(x, kernel, impl: str = "dot", depthwise_impl: str = "auto"):
  """x (N, H, W, C_in) times kernel (1, 1, C_in, C_out), as `impl` computes it."""
  if impl == "conv":
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # As a 2-D product over all pixels: on a rank-4 dot, XLA's CPU backend
  # transposes the activations for the kernel gradient (4x slower at 112x112x96).
  x2, kernel2 = x.reshape(-1, x.shape[-1]), kernel[0, 0]
  if uses_native_grad(x2.shape[0], kernel2.shape[1], x.dtype, depthwise_impl):
    # A replicated kernel takes x's device axes, so that its gradient can (vary_like).
    y = dot_native_grad(x2, vary_like(kernel2, x2))
  else:
    y = jnp.dot(x2, kernel2)
  return y.reshape(*x.shape[:-1], kernel.shape[-1])


@jax.custom_vjp
def dot_native_grad(x, kernel):
  """x (P, C) times kernel (C, F), float32, the kernel's gradient by the native
  kernel."""
  return jnp.dot(x, kernel)


def _dot_native_grad_fwd(x, kernel):
  return jnp.dot(x, kernel), (x, kernel)


def _dot_native_grad_bwd(residuals, dy):
  x, kernel = residuals
  dkernel = native.call("PointwiseKernelGrad", kernel.shape, x, dy)
  return jnp.dot(dy, kernel.T), dkernel


dot_native_grad.defvjp(_dot_native_grad_fwd, _dot_native_grad_bwd)
