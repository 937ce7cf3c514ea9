"""Building blocks of MobileNet V1 and V2 (Flax Linen, NHWC).

Each block names its sub-layers the way the papers draw them (`depthwise`,
`pointwise`, `expand`, `project`), which is also what weight conversion and the
per-layer summary rely on. Every block takes the network's `LayerSettings`
(batch norm, dtype, which implementation of the depthwise and 1x1 products).
"""

import functools
from typing import Sequence, Tuple, Union

import flax.linen as nn

from mobilenet_jax.errors import check_choice
from mobilenet_jax.models.base import LayerSettings
from mobilenet_jax.ops.batchnorm import (ACTIVATIONS, BATCHNORM_IMPLS, BatchNormAct,
                                         BatchNormVariables, PreActivation, activate, fold,
                                         value)
from mobilenet_jax.ops.conv import Conv, KernelParam, conv
from mobilenet_jax.ops.depthwise import IMPL_FNS as depthwise_fns
from mobilenet_jax.ops.depthwise import (DepthwiseConv, depthwise_batchnorm, depthwise_bias_act,
                                         resolve_impl)
from mobilenet_jax.ops.pointwise import Pointwise, pointwise
from mobilenet_jax.ops import quantize

Padding = Union[str, Sequence[Tuple[int, int]]]


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
  dilation: int = 1
  settings: LayerSettings = LayerSettings()

  @nn.compact
  def __call__(self, x, train: bool = False, defer: bool = False):
    """act(BN(conv(x))) for x an array or a PreActivation. With `defer` (the
    caller's consumer is a depthwise layer), a folded 1x1 or full convolution
    returns a PreActivation instead."""
    s = self.settings
    check_choice("activation", self.activation, ACTIVATIONS)
    # A frozen batch norm normalises with its running statistics in training
    # too (and the optimizer leaves its scale and offset alone: optim.py).
    frozen = s.bn_is_frozen(self.path)
    if s.quantization is not None:
      x = value(x)
      return quantize.conv_bn(
          x, train, self.conv_function(x), features=self.features,
          kernel_size=self.kernel_size, groups=self.groups, activation=self.activation,
          quantization=s.quantization, momentum=s.bn_momentum, epsilon=s.bn_epsilon,
          kernel_init=s.initializer(), initializing=self.is_initializing(),
          frozen=frozen, axis_name=s.bn_axis_name, dtype=s.dtype)
    check_choice("batchnorm_impl", s.batchnorm_impl, BATCHNORM_IMPLS)
    depthwise = self.groups > 1 and self.groups == x.shape[-1]
    # On CPU, a batch norm whose consumer is a native depthwise layer is applied in
    # that layer's passes: under running statistics folded into the convolution
    # (its shift and activation pending), in training as the batch's scale and shift.
    native = s.batchnorm_impl == "fused" and resolve_impl(s.depthwise_impl) == "native"
    folds = native and (not train or frozen)
    if folds and depthwise:
      return self.folded_depthwise(x)
    if folds and defer:
      return self.folded_conv(value(x))
    if native and depthwise and self.reads_pending(x) and not defer:
      # Training (folds returned): both batch norms are applied in the native passes.
      return self.batch_norm(train, frozen)(x.raw, normalize=self.normalizing_depthwise(x))
    x, deferred = value(x), native and defer and train
    if s.batchnorm_impl == "flax":  # the reference the fused form is tested against
      x = nn.BatchNorm(use_running_average=not train or frozen, momentum=s.bn_momentum,
                       epsilon=s.bn_epsilon, axis_name=s.bn_axis_name, dtype=s.dtype,
                       name="bn")(self.convolution(x))
      return activate(x, self.activation)
    if deferred and self.is_pointwise():
      # A 1x1 product gives its batch statistics where it has them cheaper: an
      # expansion's from its input, a long thin product's with its gradients' pass
      # (ops/pointwise.py); None: batch norm takes them.
      y, sums = self.convolution(x, with_sums=True)
      return self.batch_norm(train, frozen)(y, defer=True, sums=sums)
    return self.batch_norm(train, frozen)(self.convolution(x), defer=deferred)

  def batch_norm(self, train: bool, frozen: bool):
    s = self.settings
    return BatchNormAct(use_running_average=not train or frozen, momentum=s.bn_momentum,
                        epsilon=s.bn_epsilon, axis_name=s.bn_axis_name,
                        activation=self.activation, dtype=s.dtype, name="bn")

  def convolution(self, x, with_sums: bool = False):
    """The layer's convolution, as its kind and the settings choose; `with_sums`
    (a 1x1 product only), with its output's sums (Pointwise)."""
    s = self.settings
    if self.groups > 1 and self.groups == x.shape[-1]:
      return DepthwiseConv(self.features, self.kernel_size, self.strides,
                           self.padding, s.depthwise_impl, s.dtype,
                           dilation=self.dilation, kernel_init=s.initializer(), name="conv")(x)
    if self.is_pointwise():
      return Pointwise(self.features, s.dtype, s.pointwise_impl, s.initializer(),
                       s.depthwise_impl, name="conv")(x, with_sums=with_sums)
    return Conv(self.features, self.kernel_size, self.strides, self.padding, self.dilation,
                self.groups, s.depthwise_impl, s.dtype, s.initializer(), name="conv")(x)

  def is_pointwise(self) -> bool:
    return self.kernel_size == 1 and self.strides == 1 and self.groups == 1

  def reads_pending(self, x) -> bool:
    """Whether this depthwise layer applies x's pending batch norm itself (the
    native kernel does for depth multiplier 1)."""
    return isinstance(x, PreActivation) and self.features == x.shape[-1]

  def normalizing_depthwise(self, x: PreActivation):
    """In training, BatchNormAct's `normalize` for this layer on the native kernel:
    the depthwise convolution of x's value, x's scale, shift and activation applied
    as rows are read, and this layer's batch norm and activation in its passes
    (ops/depthwise.py, depthwise_batchnorm). The same parameter as DepthwiseConv's."""
    s = self.settings
    kernel = KernelParam((self.kernel_size, self.kernel_size, 1, self.features),
                         s.initializer(), name="conv")()
    return functools.partial(
        depthwise_batchnorm, x.raw.astype(s.dtype), kernel.astype(s.dtype), self.strides,
        self.padding, self.dilation, x.scale, x.shift, x.activation, epsilon=s.bn_epsilon,
        activation=self.activation, axis_name=s.bn_axis_name)

  def folded_variables(self, kernel_shape):
    """The kernel scaled by batch norm's running statistics, and the shift left
    over: the same variables ("conv/kernel", "bn/...") as the unfolded layer."""
    s = self.settings
    kernel = KernelParam(kernel_shape, s.initializer(), name="conv")()
    scale, bias, mean, var = BatchNormVariables(self.features, name="bn")()
    a, b = fold(scale, bias, mean.value, var.value, s.bn_epsilon)
    return (kernel * a).astype(s.dtype), b

  def folded_conv(self, x):
    """A 1x1 or full convolution's output as a PreActivation."""
    kernel, shift = self.folded_variables(
        (self.kernel_size, self.kernel_size, x.shape[-1] // self.groups, self.features))
    x = x.astype(self.settings.dtype)
    return PreActivation(self.conv_function(x)(x, kernel), shift, self.activation)

  def folded_depthwise(self, x):
    """The depthwise layer with batch norm folded into its kernel and bias, in
    one native pass: the input's pending shift and activation (a PreActivation)
    applied as rows are read, this layer's bias and activation as outputs are
    stored."""
    s = self.settings
    kernel, bias = self.folded_variables((self.kernel_size, self.kernel_size, 1,
                                          self.features))
    pre = x if self.reads_pending(x) else None
    x = pre.raw if pre else value(x)
    y = depthwise_bias_act(x.astype(s.dtype), kernel, bias, self.activation, self.strides,
                           self.padding, self.dilation, s.depthwise_impl,
                           pre.shift if pre else None, pre.activation if pre else "linear",
                           input_scale=pre.scale if pre else None)
    return y.astype(s.dtype)

  def conv_function(self, x):
    """(x, kernel) -> the convolution, computed as the float layers above
    compute it (for the quantized layer, whose kernel is folded and rounded)."""
    s = self.settings
    if self.groups > 1 and self.groups == x.shape[-1]:
      impl = depthwise_fns[resolve_impl(s.depthwise_impl)]
      return lambda x, kernel: impl(x, kernel, self.strides, self.padding, self.dilation)
    if self.kernel_size == 1 and self.strides == 1 and self.groups == 1:
      return lambda x, kernel: pointwise(x, kernel, s.pointwise_impl, s.depthwise_impl)
    return functools.partial(conv, strides=self.strides, padding=self.padding,
                             dilation=self.dilation, groups=self.groups,
                             depthwise_impl=s.depthwise_impl)


class SeparableBlock(nn.Module):
  """MobileNet V1 block: 3x3 depthwise conv+BN+ReLU6, then 1x1 pointwise
  conv+BN+ReLU6 to `features` channels (V1 paper, Figure 3 right).
  Returns (output, depthwise output); the output may be a PreActivation."""
  features: int
  strides: int = 1
  depth_multiplier: int = 1
  padding: Padding = "SAME"
  dilation: int = 1
  settings: LayerSettings = LayerSettings()

  @nn.compact
  def __call__(self, x, train: bool = False):
    depthwise = depthwise_conv_bn(x, self.depth_multiplier, self.strides, self.padding,
                                  self.dilation, self.settings, train, "depthwise")
    x = ConvBN(self.features, 1, settings=self.settings, name="pointwise")(depthwise, train,
                                                                          defer=True)
    return x, depthwise


class FullConvBlock(nn.Module):
  """The V1 paper's Table 4 "Conv MobileNet" block: one full 3x3 conv+BN+ReLU6
  where MobileNet has a depthwise separable block."""
  features: int
  strides: int = 1
  padding: Padding = "SAME"
  dilation: int = 1
  settings: LayerSettings = LayerSettings()

  @nn.compact
  def __call__(self, x, train: bool = False):
    return ConvBN(self.features, 3, self.strides, self.padding, dilation=self.dilation,
                  settings=self.settings, name="conv")(x, train)


class InvertedResidual(nn.Module):
  """MobileNetV2 bottleneck block (V2 paper, Table 1 and Figure 3b).

  x -> [1x1 expand to t*c_in, BN, `activation`] (skipped when t == 1)
    -> 3x3 depthwise, stride s, BN, `activation` (ReLU6 in the paper)
    -> 1x1 project to `features`, BN, `bottleneck_activation` ("linear" in the
       paper).

  Shortcuts (Figure 6b), always only between tensors of equal shape:
    "bottleneck": output += x (the paper's inverted residual);
    "expansion":  this block's expansion += the previous block's expansion
                  (the classical residual between the wide layers);
    "none":       no shortcut.
  Returns (output, expansion, depthwise output): the next block's expansion
  shortcut uses the expansion; both are endpoints.
  """
  features: int
  expansion: float
  strides: int = 1
  bottleneck_activation: str = "linear"
  shortcut: str = "bottleneck"
  dilation: int = 1
  settings: LayerSettings = LayerSettings()
  activation: str = "relu6"

  @nn.compact
  def __call__(self, x, prev_expansion=None, train: bool = False):
    inputs = x
    if self.expansion != 1:
      x = ConvBN(expanded_channels(x.shape[-1], self.expansion), 1,
                 activation=self.activation, settings=self.settings, name="expand")(
                     x, train, defer=True)
    if (self.shortcut == "expansion" and prev_expansion is not None
        and prev_expansion.shape == x.shape):
      x = quantized(value(x) + prev_expansion, self.settings, train, "expansion_quant")
      self.sow("intermediates", "expansion_shortcut", prev_expansion)
    expansion = x
    # TF "SAME" padding: for stride 2 it pads 0 before and 1 after on even
    # sizes and 1 on both sides on odd ones, as Keras' `correct_pad` does.
    depthwise = depthwise_conv_bn(x, 1, self.strides, "SAME", self.dilation,
                                  self.settings, train, "depthwise", self.activation)
    x = ConvBN(self.features, 1, activation=self.bottleneck_activation,
               settings=self.settings, name="project")(depthwise, train)
    if self.shortcut == "bottleneck" and inputs.shape == x.shape:
      inputs = value(inputs)
      x = quantized(x + inputs, self.settings, train, "add_quant")
      self.sow("intermediates", "bottleneck_shortcut", inputs)
    return x, value(expansion), depthwise


def expanded_channels(in_channels: int, expansion: float) -> int:
  """Width of the expansion layer: t * c_in (Keras: `expansion * in_channels`)."""
  return int(round(in_channels * expansion))


def quantized(x, settings: LayerSettings, train: bool, name: str):
  """`x` as int8 holds it in a quantized network (a residual sum), else `x`."""
  if settings.quantization is None:
    return x
  return quantize.ActQuant(settings.quantization, settings.bn_momentum,
                           axis_name=settings.bn_axis_name, name=name)(x, train)


def depthwise_conv_bn(x, depth_multiplier, strides, padding, dilation, settings, train,
                      name, activation="relu6"):
  """3x3 depthwise conv (groups = input channels) + BN + `activation`.

  Output channel c * depth_multiplier + m is input channel c filtered by its
  m-th kernel, the order of Keras' DepthwiseConv2D; the kernel has shape
  (3, 3, 1, channels * depth_multiplier).
  """
  channels = x.shape[-1]
  return ConvBN(channels * depth_multiplier, 3, strides, padding, groups=channels,
                activation=activation, dilation=dilation, settings=settings,
                name=name)(x, train)
