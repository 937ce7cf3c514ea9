"""Building blocks shared by MobileNet V1 and V2 (Flax Linen, NHWC).

Each block names its sub-layers the way the papers draw them (`depthwise`,
`pointwise`, `expand`, `project`), which is also what weight conversion and the
per-layer summary rely on.
"""

from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilenet_jax.errors import check_choice
from mobilenet_jax.ops.batchnorm import ACTIVATIONS, BatchNormAct
from mobilenet_jax.ops.depthwise import DepthwiseConv

Padding = Union[str, Sequence[Tuple[int, int]]]

POINTWISE_IMPLS = ("dot", "conv")


class Pointwise(nn.Module):
  """1x1 convolution without bias as one matrix product over all pixels.

  The same parameter ("kernel", (1, 1, C_in, C_out), lecun_normal) and the
  same result as nn.Conv; XLA's CPU convolution is ~3x slower than its dot
  for 1x1 kernels (DESIGN.md), and on GPU/TPU both lower to the same matmul.
  `impl="conv"` computes it as a convolution instead: the TFLite converter
  cannot lower a rank-4 dot_general, and turns the convolution into TFLite's
  own CONV_2D (export.py).
  """
  features: int
  dtype: Any = jnp.float32
  impl: str = "dot"

  @nn.compact
  def __call__(self, x):
    check_choice("pointwise_impl", self.impl, POINTWISE_IMPLS)
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (1, 1, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.impl == "conv":
      return jax.lax.conv_general_dilated(
          x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # As a 2-D product over all pixels: on a rank-4 dot, XLA's CPU backend
    # transposes the activations for the kernel gradient (4x slower at 112x112x96).
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel[0, 0])
    return y.reshape(*x.shape[:-1], self.features)


class ConvBN(nn.Module):
  """k x k convolution without bias -> batch norm -> optional activation.

  Computes act(BN(conv(x))). `groups` > 1 gives a grouped convolution; with
  groups equal to the input channels it is a depthwise convolution whose
  kernel has shape (k, k, 1, features).
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  padding: Padding = "SAME"
  groups: int = 1
  activation: str = "relu6"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = None
  depthwise_impl: str = "auto"
  pointwise_impl: str = "dot"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.groups > 1 and self.groups == x.shape[-1]:
      x = DepthwiseConv(self.features, self.kernel_size, self.strides,
                        self.padding, self.depthwise_impl, self.dtype,
                        name="conv")(x)
    elif self.kernel_size == 1 and self.strides == 1 and self.groups == 1:
      x = Pointwise(self.features, self.dtype, self.pointwise_impl, name="conv")(x)
    else:
      x = nn.Conv(self.features, (self.kernel_size, self.kernel_size),
                  strides=self.strides, padding=self.padding,
                  feature_group_count=self.groups, use_bias=False,
                  dtype=self.dtype, name="conv")(x)
    check_choice("activation", self.activation, ACTIVATIONS)
    return BatchNormAct(use_running_average=not train, momentum=self.bn_momentum,
                        epsilon=self.bn_epsilon, axis_name=self.bn_axis_name,
                        activation=self.activation, dtype=self.dtype, name="bn")(x)


class SeparableBlock(nn.Module):
  """MobileNet V1 block: 3x3 depthwise conv+BN+ReLU6, then 1x1 pointwise
  conv+BN+ReLU6 to `features` channels (V1 paper, Figure 3 right).

  With `full=True` it is instead one full 3x3 conv+BN+ReLU6 from the input to
  `features` channels: the "Conv MobileNet" of the V1 paper's Table 4.
  """
  features: int
  strides: int = 1
  depth_multiplier: int = 1
  full: bool = False
  padding: Padding = "SAME"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = None
  depthwise_impl: str = "auto"
  pointwise_impl: str = "dot"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = bn_settings(self)
    if self.full:
      return ConvBN(self.features, 3, self.strides, self.padding, **bn,
                    name="conv")(x, train)
    x = depthwise_conv_bn(x, self.depth_multiplier, self.strides,
                          self.padding, bn, train, "depthwise")
    return ConvBN(self.features, 1, **bn, name="pointwise")(x, train)


class InvertedResidual(nn.Module):
  """MobileNetV2 bottleneck block (V2 paper, Table 1 and Figure 3b).

  x -> [1x1 expand to t*c_in, BN, ReLU6] (skipped when t == 1)
    -> 3x3 depthwise, stride s, BN, ReLU6
    -> 1x1 project to `features`, BN, `bottleneck_activation` ("linear" in the
       paper).

  Shortcuts (Figure 6b), always only between tensors of equal shape:
    "bottleneck": output += x (the paper's inverted residual);
    "expansion":  this block's expansion += the previous block's expansion
                  (the classical residual between the wide layers);
    "none":       no shortcut.
  Returns (output, expansion) so the next block can use the expansion.
  """
  features: int
  expansion: float
  strides: int = 1
  bottleneck_activation: str = "linear"
  shortcut: str = "bottleneck"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3
  bn_axis_name: Optional[str] = None
  depthwise_impl: str = "auto"
  pointwise_impl: str = "dot"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, prev_expansion=None, train: bool = False):
    bn = bn_settings(self)
    inputs = x
    if self.expansion != 1:
      x = ConvBN(expanded_channels(x.shape[-1], self.expansion), 1, **bn,
                 name="expand")(x, train)
    if (self.shortcut == "expansion" and prev_expansion is not None
        and prev_expansion.shape == x.shape):
      x = x + prev_expansion
      self.sow("intermediates", "expansion_shortcut", prev_expansion)
    expansion = x
    # TF "SAME" padding: for stride 2 it pads 0 before and 1 after on even
    # sizes and 1 on both sides on odd ones, as Keras' `correct_pad` does.
    x = depthwise_conv_bn(x, 1, self.strides, "SAME", bn, train, "depthwise")
    x = ConvBN(self.features, 1, activation=self.bottleneck_activation, **bn,
               name="project")(x, train)
    if self.shortcut == "bottleneck" and inputs.shape == x.shape:
      x = x + inputs
      self.sow("intermediates", "bottleneck_shortcut", inputs)
    return x, expansion


def expanded_channels(in_channels: int, expansion: float) -> int:
  """Width of the expansion layer: t * c_in (Keras: `expansion * in_channels`)."""
  return int(round(in_channels * expansion))


def depthwise_conv_bn(x, depth_multiplier, strides, padding, bn, train, name):
  """3x3 depthwise conv (groups = input channels) + BN + ReLU6.

  Output channel c * depth_multiplier + m is input channel c filtered by its
  m-th kernel, the order of Keras' DepthwiseConv2D; the kernel has shape
  (3, 3, 1, channels * depth_multiplier).
  """
  channels = x.shape[-1]
  return ConvBN(channels * depth_multiplier, 3, strides, padding,
                groups=channels, **bn, name=name)(x, train)


def bn_settings(module) -> dict:
  """The batch-norm, implementation and dtype attributes a module passes on."""
  return dict(bn_momentum=module.bn_momentum, bn_epsilon=module.bn_epsilon,
              bn_axis_name=module.bn_axis_name, depthwise_impl=module.depthwise_impl,
              pointwise_impl=module.pointwise_impl, dtype=module.dtype)
