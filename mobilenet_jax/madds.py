"""Analytic parameter and multiply-add counts, layer by layer.

Counting convention (V1 paper, Section 3; docs/conformance.md): a k x k
convolution from c_in to c_out channels in `groups` groups on an h x w output
map costs k*k*(c_in/groups)*c_out*h*w multiply-adds, so a depthwise conv costs
k*k*c*h*w and a pointwise conv c_in*c_out*h*w; a dense layer c_in*c_out.
Batch norm, activations, pooling and residual adds are not counted. Parameters
count every variable as Keras does: conv kernels, biases, and batch norm's
scale, offset (trainable) and moving mean and variance (not trainable).

This walks the same block tables and channel rules as the models but not
their code, so tests can check one against the other.
"""

import dataclasses
import math
from typing import List, Tuple

from mobilenet_jax.models import get_model, mobilenet_v1, mobilenet_v2
from mobilenet_jax.models.base import check_image_size
from mobilenet_jax.models.layers import expanded_channels


@dataclasses.dataclass
class Layer:
  """One convolution or dense layer, with its batch norm if it has one."""
  name: str
  operator: str             # e.g. "conv2d 3x3", "dwconv 3x3", "dense"
  input_shape: Tuple[int, int, int]
  output_shape: Tuple[int, int, int]
  stride: int
  params: int               # all variables
  trainable_params: int
  madds: int
  group: str                # the paper-table row this layer belongs to


def conv(name, group, in_shape, c_out, k, stride, groups=1, out_hw=None,
         bn=True, bias=False) -> Layer:
  """A k x k conv (+ BN); `out_hw` defaults to TF "SAME" (ceil(h / s))."""
  h, w, c_in = in_shape
  oh, ow = out_hw or (math.ceil(h / stride), math.ceil(w / stride))
  weights = k * k * (c_in // groups) * c_out + (c_out if bias else 0)
  trainable = weights + (2 * c_out if bn else 0)
  total = trainable + (2 * c_out if bn else 0)
  op = ("dwconv" if groups > 1 and groups == c_in else "conv2d") + f" {k}x{k}"
  return Layer(name, op, in_shape, (oh, ow, c_out), stride, total, trainable,
               k * k * (c_in // groups) * c_out * oh * ow, group)


def dense(name, c_in, c_out) -> Layer:
  p = c_in * c_out + c_out
  return Layer(name, "dense", (1, 1, c_in), (1, 1, c_out), 1, p, p,
               c_in * c_out, "classifier")


def v1_hw(shape, stride, padding: str):
  """V1's stride-2 convs pad (0, 1) then run 'valid' under Keras's convention;
  everything else is TF "SAME" (ceil(h / s))."""
  h, w, _ = shape
  if stride == 2 and padding == "keras":
    return (h - 2) // 2 + 1, (w - 2) // 2 + 1
  return math.ceil(h / stride), math.ceil(w / stride)


def v1_layers(m: mobilenet_v1.MobileNetV1, image_size) -> List[Layer]:
  shape = input_shape(image_size, "MobileNetV1")
  (stem_stride, _), *strides = mobilenet_v1.layer_strides(m.blocks, m.shallow,
                                                          m.output_stride)
  c0 = mobilenet_v1.width(mobilenet_v1.STEM_CHANNELS, m.alpha, m.min_depth)
  layers = [conv("stem", "stem", shape, c0, 3, stem_stride,
                 out_hw=v1_hw(shape, stem_stride, m.padding))]
  for (i, c, _), (s, _) in zip(mobilenet_v1.block_plan(m.blocks, m.shallow), strides):
    shape = layers[-1].output_shape
    c = mobilenet_v1.width(c, m.alpha, m.min_depth)
    hw = v1_hw(shape, s, m.padding)
    group = f"{'conv' if m.conv_type == 'full' else 'separable'} c={c} s={s}"
    if m.conv_type == "full":
      layers.append(conv(f"block_{i}/conv", group, shape, c, 3, s, out_hw=hw))
    else:
      dw = shape[2] * m.depth_multiplier
      layers.append(conv(f"block_{i}/depthwise", group, shape, dw, 3, s,
                         groups=shape[2], out_hw=hw))
      layers.append(conv(f"block_{i}/pointwise", group,
                         layers[-1].output_shape, c, 1, 1))
  return layers + head(m, layers[-1].output_shape)


def v2_layers(m: mobilenet_v2.MobileNetV2, image_size) -> List[Layer]:
  shape = input_shape(image_size, "MobileNetV2")
  (stem_stride, _), *strides = mobilenet_v2.layer_strides(m.blocks, m.expansion,
                                                          m.output_stride)
  stem = mobilenet_v2.make_divisible(32 * m.alpha, m.divisible_by, m.min_depth)
  layers = [conv("stem", "stem", shape, stem, 3, stem_stride)]
  plan = mobilenet_v2.block_plan(m.blocks, m.expansion)
  for i, ((t, c, _), (s, _)) in enumerate(zip(plan, strides)):
    shape = layers[-1].output_shape
    c = m.channels(c)
    group = f"bottleneck t={t:g} c={c}"
    if t != 1:
      layers.append(conv(f"block_{i}/expand", group, shape,
                         expanded_channels(shape[2], t), 1, 1))
    wide = layers[-1].output_shape if t != 1 else shape
    layers.append(conv(f"block_{i}/depthwise", group, wide, wide[2], 3, s,
                       groups=wide[2]))
    layers.append(conv(f"block_{i}/project", group, layers[-1].output_shape,
                       c, 1, 1))
  head_c = mobilenet_v2.head_channels(m.alpha, m.divisible_by, m.min_depth,
                                      m.finegrain_classification_mode)
  layers.append(conv("head", "head", layers[-1].output_shape, head_c, 1, 1))
  return layers + head(m, layers[-1].output_shape)


def input_shape(image_size, name: str) -> Tuple[int, int, int]:
  """(h, w, 3) for a size or an (h, w) pair, checked against the strides."""
  h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  check_image_size(min(h, w), name)
  return h, w, 3


def head(m, shape) -> List[Layer]:
  """The classifier, if the model has one (num_classes=0: pooled features)."""
  return [dense("classifier", shape[2], m.num_classes)] if m.include_top and m.num_classes else []


def layers(model_config, image_size: int) -> List[Layer]:
  """Per-layer counts for `config.model` at `image_size` (validated)."""
  m = get_model(model_config)
  fn = v1_layers if isinstance(m, mobilenet_v1.MobileNetV1) else v2_layers
  return fn(m, image_size)


def totals(layer_list: List[Layer]) -> dict:
  return {
      "params": sum(l.params for l in layer_list),
      "trainable_params": sum(l.trainable_params for l in layer_list),
      "madds": sum(l.madds for l in layer_list),
  }


def count(model_config, image_size: int) -> dict:
  """{"params", "trainable_params", "madds"} for one image."""
  return totals(layers(model_config, image_size))
