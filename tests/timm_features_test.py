"""`stage_endpoints` against timm's `features_only` feature pyramid.

timm's numbers are pinned below with their source, so the comparison runs
without timm (it needs PyTorch, which this project does not install); where
timm is installed, `test_timm_itself` builds timm's own feature networks and
checks both the pin and ours against them.

Source: timm 1.0.29 (pip), timm/models/efficientnet.py: `_gen_mobilenet_v1`
and `_gen_mobilenet_v2` (the arch defs; channels are
round_channels(c * multiplier) = make_divisible(c * multiplier, 8), TF-slim's
rule) and `EfficientNetFeatures`, whose `feature_info` the builder in
timm/models/_efficientnet_builder.py fills (`EfficientNetBuilder.__call__`,
feature_location "bottleneck"): the last block of each stack that the next
stack's stride ends, the stem only where the first block strides. The feature
network has no head conv, so V2's reduction-32 level is the 320-channel last
bottleneck, not the 1280-channel 1x1 conv (our layer_19). `reduction()` is the
map's real stride: with output_stride 16 or 8 the last levels stay there.

Read from timm with
  timm.create_model(name, features_only=True, pretrained=False[, output_stride=os])
  .feature_info.channels(), .reduction()
Not compared: mobilenetv2_110d / _120d (timm's depth multiplier: more blocks
per stage, no knob here) and mobilenetv1_100h (another head and activation).
timm defines no V1 below 1.0 (ours: int(c * alpha), Keras's rule, which
agrees with timm's rounding at 1.25).
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from mobilenet_jax.models import get_model

# timm model -> (our config, feature_info.channels()) at output_stride 32.
TIMM_CHANNELS = {
    "mobilenetv1_100": (dict(name="mobilenet_v1", alpha=1.0), [64, 128, 256, 512, 1024]),
    "mobilenetv1_125": (dict(name="mobilenet_v1", alpha=1.25), [80, 160, 320, 640, 1280]),
    "mobilenetv2_035": (dict(name="mobilenet_v2", alpha=0.35), [8, 8, 16, 32, 112]),
    "mobilenetv2_050": (dict(name="mobilenet_v2", alpha=0.5), [8, 16, 16, 48, 160]),
    "mobilenetv2_075": (dict(name="mobilenet_v2", alpha=0.75), [16, 24, 24, 72, 240]),
    "mobilenetv2_100": (dict(name="mobilenet_v2", alpha=1.0), [16, 24, 32, 96, 320]),
    "mobilenetv2_140": (dict(name="mobilenet_v2", alpha=1.4), [24, 32, 48, 136, 448]),
}
# output_stride -> feature_info.reduction(), the same for every model above;
# the channels do not change with output_stride.
TIMM_REDUCTIONS = {32: [2, 4, 8, 16, 32], 16: [2, 4, 8, 16, 16], 8: [2, 4, 8, 8, 8]}
SIZE = 224


@functools.lru_cache(maxsize=None)
def ours(timm_name: str, output_stride: int = 32):
  """(stage names, channels, real strides) of our network via eval_shape."""
  config = dict(TIMM_CHANNELS[timm_name][0], include_top=False, output_stride=output_stride)
  model = get_model(config)
  images = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  ends = jax.eval_shape(lambda v, x: model.apply(v, x, endpoints=True), variables, images)
  names = model.stage_endpoints()
  return (names, [ends[n].shape[3] for n in names], [SIZE // ends[n].shape[1] for n in names])


@pytest.mark.parametrize("timm_name", sorted(TIMM_CHANNELS))
def test_channels_and_reductions_are_timms(timm_name):
  _, channels, reductions = ours(timm_name)
  assert channels == TIMM_CHANNELS[timm_name][1]
  assert reductions == TIMM_REDUCTIONS[32]


@pytest.mark.parametrize("timm_name", ["mobilenetv1_100", "mobilenetv2_100"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_keeps_timms_levels(timm_name, output_stride):
  names, channels, reductions = ours(timm_name, output_stride)
  assert names == ours(timm_name)[0]
  assert channels == TIMM_CHANNELS[timm_name][1]
  assert reductions == TIMM_REDUCTIONS[output_stride]


def test_stage_names_and_the_v2_head_conv():
  assert ours("mobilenetv2_100")[0] == ["layer_2", "layer_4", "layer_7", "layer_14", "layer_18"]
  assert ours("mobilenetv1_100")[0] == [f"Conv2d_{i}_pointwise" for i in (1, 3, 5, 11, 13)]
  model = get_model(dict(name="mobilenet_v2", include_top=False))
  images = jax.ShapeDtypeStruct((1, 96, 96, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  ends = jax.eval_shape(lambda v, x: model.apply(v, x, endpoints=True), variables, images)
  assert ends["layer_19"].shape == (1, 3, 3, 1280)  # the head conv: an endpoint, not a stage
  assert "layer_19" not in model.stage_endpoints()


@pytest.mark.parametrize("timm_name", sorted(TIMM_CHANNELS))
def test_timm_itself(timm_name):
  """timm's own feature_info, where timm is installed: the pin and ours."""
  timm = pytest.importorskip("timm")
  for output_stride in (32, 16, 8):
    net = timm.create_model(timm_name, features_only=True, pretrained=False,
                            output_stride=output_stride)
    got = (net.feature_info.channels(), net.feature_info.reduction())
    assert got == (TIMM_CHANNELS[timm_name][1], TIMM_REDUCTIONS[output_stride]), \
        f"timm {timm.__version__} changed {timm_name}'s features at os {output_stride}"
    assert got == tuple(ours(timm_name, output_stride)[1:])
