"""1x1 convolution as one matrix product over all pixels (or, for TFLite, as a
convolution): the `pointwise_impl` switch.

On CPU, where the native kernels are in use, a product with many pixels and few
output features takes its kernel gradient from the native kernel
(depthwise_cpu.cc, `PointwiseKernelGrad`): XLA's dot runs these long, thin
contractions at a third to a quarter of the speed the kernel's register tiles reach
(docs/performance.md, "AMD EPYC, Zen 4"). The forward product and the input
gradient stay XLA's. tests/pointwise_test.py checks both gradients against XLA's.

In training, a product whose batch norm is applied by the native depthwise layer
after it gives that batch norm's statistics itself (`Pointwise(with_sums=True)`):
- an expansion (many more output features than input channels), from its input
  (`product_sums`): in V2's train step on a Zen 4 EPYC, 1.04x faster in the median of
  six alternated pairs (docs/performance.md, "An expansion's statistics from its
  input");
- a product whose kernel gradient is the native kernel's, from its output, with both
  gradients from one native pass that also applies the statistics' part of batch
  norm's backward (`dot_and_sums`): V1's train step 1.013x in the median of five
  alternated pairs on a Zen 4 EPYC (docs/performance.md, "One pass for a 1x1 layer's
  gradients").
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilenet_jax.errors import check_choice
from mobilenet_jax.ops import native
from mobilenet_jax.ops.batchnorm import native_sums
from mobilenet_jax.ops.depthwise import resolve_impl
from mobilenet_jax.ops.sharding import vary_like

POINTWISE_IMPLS = ("dot", "conv")
# The kernel gradients the native kernel takes. With up to 64 output features it was
# faster than XLA's dot, and with 96 or more not; in the train step, taking those
# of 28x28 at batch 32 (25,088 pixels) too gained nothing measurable
# (docs/performance.md, "AMD EPYC, Zen 4").
NATIVE_GRAD_MIN_PIXELS = 50_000
NATIVE_GRAD_MAX_FEATURES = 64
# A product with at least this many times more output features than input channels
# (an inverted residual's expansion) takes its batch statistics from its input:
# product_sums. Measured at ratio 6 (V2's). The Gram products add 2/(3 * ratio) to the
# layer's product work and save about four passes over its output: by that estimate
# a gain from about ratio 2 at V2's widths, so 4 keeps a margin; V1's 1x1 layers
# (ratio 1 and 2) keep their own sums.
SUMS_FROM_INPUT_MIN_RATIO = 4


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
  def __call__(self, x, with_sums: bool = False):
    """The product; `with_sums` (training, its batch norm applied later), the pair
    (product, its sums as batchnorm.native_sums gives them), the sums None where
    the product has no cheaper way to them than batch norm's own pass."""
    check_choice("pointwise_impl", self.impl, POINTWISE_IMPLS)
    kernel = self.param("kernel", self.kernel_init,
                        (1, 1, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    from_input = sums_from_input(x.shape[-1], self.features, x.dtype, self.depthwise_impl)
    if (with_sums and not from_input and self.impl == "dot"
        and uses_native_grad(x.size // x.shape[-1], self.features, x.dtype,
                             self.depthwise_impl)):
      return dot_and_sums(x, kernel[0, 0])
    y = pointwise(x, kernel, self.impl, self.depthwise_impl)
    if not with_sums:
      return y
    return y, (product_sums(x.reshape(-1, x.shape[-1]), kernel[0, 0]) if from_input else None)


def sums_from_input(channels: int, features: int, dtype, depthwise_impl: str) -> bool:
  """Whether a product's batch statistics are cheaper from its input (product_sums)."""
  return (features >= SUMS_FROM_INPUT_MIN_RATIO * channels and dtype == jnp.float32
          and resolve_impl(depthwise_impl) == "native")


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


def dot_and_sums(x, kernel):
  """(y, native_sums(y)) for y = x (..., C) times kernel (C, F), float32, where the
  native kernel takes the kernel's gradient (uses_native_grad). Both gradients come
  from one native pass (PointwiseBackwardSums), which makes y's whole gradient, dz
  + d0 + 2 * d1 * y (the sums' part, native_sums' VJP), block by block as it reads
  dz and y. Under autodiff XLA stores that sum, then the two products read it
  (docs/performance.md, "One pass for a 1x1 layer's gradients")."""
  return _dot_and_sums(x, vary_like(kernel, x))  # as dot_native_grad's kernel


@jax.custom_vjp
def _dot_and_sums(x, kernel):
  return _dot_and_sums_fwd(x, kernel)[0]


def _dot_and_sums_fwd(x, kernel):
  y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel).reshape(*x.shape[:-1], kernel.shape[1])
  # Summed in x's shape, as batch norm sums its input (rows of one image row).
  return (y, native_sums(y)), (x, kernel, y)


def _dot_and_sums_bwd(residuals, cotangents):
  x, kernel, y = residuals
  dz, dsums = cotangents
  flat = lambda a: a.reshape(-1, a.shape[-1])
  dx, dkernel = native.call("PointwiseBackwardSums", [flat(x).shape, kernel.shape], flat(x),
                            kernel, flat(dz), flat(y), dsums[0], dsums[1])
  return dx.reshape(x.shape), dkernel


_dot_and_sums.defvjp(_dot_and_sums_fwd, _dot_and_sums_bwd)


def gram(x):
  """x.T @ x for x (P, C): by the native kernel where it takes such a product."""
  if uses_native_grad(x.shape[0], x.shape[1], x.dtype, "native"):
    return native.call("PointwiseKernelGrad", (x.shape[1],) * 2, x, x)
  return jnp.dot(x.T, x)


def product_sums(x, kernel):
  """(2, F): the sums over the P pixels of y = x @ kernel (x (P, C), float32) and of
  y * y, as batch norm's statistics of y need them, from x alone: sum(y) = sum(x) @
  kernel and sum(y * y) = diag(kernel.T @ (x.T @ x) @ kernel). For an expansion
  (F = 6C) this reads x, a sixth of y's size, and its gradient leaves y's alone;
  summing y instead reads y in the forward pass and adds a pass over y's gradient.
  Both are E[y^2] computed before E[y]^2 is taken from it, as flax does."""
  return _product_sums(x, vary_like(kernel, x))  # as dot_native_grad's kernel


@jax.custom_vjp
def _product_sums(x, kernel):
  return _product_sums_fwd(x, kernel)[0]


def _product_sums_fwd(x, kernel):
  sum_x, g = jnp.sum(x, axis=0), gram(x)
  sums = jnp.stack([sum_x @ kernel, jnp.sum(kernel * (g @ kernel), axis=0)])
  return sums, (x, kernel, sum_x, g)


def _product_sums_bwd(residuals, dsums):
  x, kernel, sum_x, g = residuals
  d0, d1 = dsums
  # sum(y * y)[f] = k_f.T G k_f: its gradient by G is K diag(d1) K.T, and by x
  # (G = x.T x, symmetric) twice x times that.
  dx = x @ (2 * (kernel * d1) @ kernel.T) + kernel @ d0
  dkernel = jnp.outer(sum_x, d0) + 2 * (g @ kernel) * d1
  return dx, dkernel


_product_sums.defvjp(_product_sums_fwd, _product_sums_bwd)
