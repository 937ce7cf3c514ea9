"""TF-slim's own feature-map shape expectations for MobileNet V1 and V2.

Source: repository tensorflow/models,
  research/slim/nets/mobilenet_v1_test.py             (class MobilenetV1Test)
  research/slim/nets/mobilenet/mobilenet_v2_test.py   (class MobilenetV2Test)
(conv_blocks.py and mobilenet.py hold no expectations of their own; there is
no mobilenet_test.py in research/slim/nets/mobilenet/.) Each row below names
the slim test it copies. Only (H, W, C) is compared: slim's batch sizes (5, 10)
do not matter, and neither does its input depth (the V2 tests feed 16 or 2
channels; the stem conv maps any input depth to its own width, so 3 is used
here). Shapes come from jax.eval_shape: nothing is computed.

Slim's knobs -> ours: depth_multiplier -> alpha; slim's padding is TF "SAME"
everywhere -> padding="same" (Keras's V1 convention differs at odd sizes: at
250x300 it gives 7x9, slim 8x10); slim's V1 min_depth default 8 is passed
explicitly (ours is 1); slim V2's finegrain_classification_mode default False
is passed explicitly (ours is True); slim's output_stride=None is our 32.

Not pinned (no such feature here, or not a shape):
  mobilenet_v1_test.py
  - testBuildAndCheckAllEndPointsUptoConv2d_13, testOutputStride16...,
    testOutputStride8..., testBuildAndCheckAllEndPointsApproximateFaceNet: the
    halves built with use_explicit_padding=True. Slim pads (k-1)//2 on both
    sides of every 3x3 conv (1, 1) then runs VALID: the same sizes as "SAME"
    at every input size, but not the same values at stride 2 (SAME pads
    (0, 1) at even sizes) nor Keras's (0, 1). padding="keras" gives the same
    shapes at these even sizes (224, 128) but is a different padding, so it
    is not pinned as slim's explicit padding. The SAME halves are pinned.
  - testBuildOnlyUptoFinalEndpoint: final_endpoint (truncating the network)
    does not exist here; it checks endpoint names only.
  - testBuildCustomNetworkUsingConvDefs: conv_defs (a replacement layer list,
    56x56x512 after 4 layers) does not exist here.
  - testModelHasExpectedNumberOfParameters: 3,217,920 is a parameter count,
    not a shape (= 3,185,088 conv weights + 3 x 10,944 BN channels: slim's
    test arg scope has beta and the two moving statistics, no gamma).
  - testBuildClassificationNetwork, testUnknowBatchSize, testEvaluation,
    testTrainEvalWithReuse (150x150): logits / predictions shapes only (the
    classifier, not the backbone; include_top=False here).
  - testBuildPreLogitsNetwork: num_classes=None -> AvgPool [B, 1, 1, 1024];
    ours (num_classes=0) returns [B, 1024] without the 1x1 spatial dims.
  - testLogitsNotSqueezed: spatial_squeeze=False ([1, 1, 1, 25] logits).
  - testRaiseValueErrorWithInvalidDepthMultiplier: an error, not a shape.
  - testBatchNormScope*: arg scopes.
  mobilenet/mobilenet_v2_test.py
  - testWithOutputStride8AndExplicitPadding, testWithOutputStride16And
    ExplicitPadding: use_explicit_padding (shapes 28x28, 14x14, the same as
    the pinned SAME rows).
  - testWithSplits: split_expansion; testMultiplier: a custom multiplier_func
    in a replaced conv_defs layer; testCreation's Conv2D op count;
    testCreationNoClasses (global_pool identity); testBatchNormScope*.
  - The 1001 in the Conv2D-depth sets of testDivisibleBy,
    testDivisibleByWithArgScope and testFineGrained: the logits conv, absent
    with include_top=False; the rest of each set is pinned.
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from mobilenet_jax.models import get_model


@functools.lru_cache(maxsize=None)
def _build(name, hw, knobs):
  """(endpoint name -> (H, W, C), last feature map (H, W, C)) via eval_shape."""
  model = get_model(dict(name=name, include_top=False, padding="same", **dict(knobs)))
  images = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
  endpoints = jax.eval_shape(lambda v, x: model.apply(v, x, endpoints=True),
                             variables, images)
  last = jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)
  return ({k: tuple(v.shape[1:]) for k, v in endpoints.items()}, tuple(last.shape[1:]))


def endpoints(name, hw, **knobs):
  return _build(name, tuple(hw), tuple(sorted(knobs.items())))[0]


def feature_map(name, hw, **knobs):
  return _build(name, tuple(hw), tuple(sorted(knobs.items())))[1]


def v1(hw, alpha=1.0, output_stride=32, min_depth=8):
  """Slim's mobilenet_v1 / mobilenet_v1_base defaults (min_depth=8)."""
  return dict(name="mobilenet_v1", hw=hw, alpha=alpha, output_stride=output_stride,
              min_depth=min_depth)


def v2(hw, alpha=1.0, output_stride=32, min_depth=8, divisible_by=8,
       finegrain_classification_mode=False):
  """Slim's mobilenet_v2.mobilenet defaults (finegrain off, 8 and 8)."""
  return dict(name="mobilenet_v2", hw=hw, alpha=alpha, output_stride=output_stride,
              min_depth=min_depth, divisible_by=divisible_by,
              finegrain_classification_mode=finegrain_classification_mode)


def _endpoints(cfg):
  cfg = dict(cfg)
  return endpoints(cfg.pop("name"), cfg.pop("hw"), **cfg)


def _feature_map(cfg):
  cfg = dict(cfg)
  return feature_map(cfg.pop("name"), cfg.pop("hw"), **cfg)


# ---------------------------------------------------------------- MobileNet V1

# Slim's endpoints_shapes dicts, batch dropped, one column per slim test
# (each test's dict is also its exact key set):
#   os32:    testBuildAndCheckAllEndPointsUptoConv2d_13          224, default
#   os16:    testOutputStride16BuildAndCheckAllEndPointsUptoConv2d_13
#   os8:     testOutputStride8BuildAndCheckAllEndPointsUptoConv2d_13
#   facenet: testBuildAndCheckAllEndPointsApproximateFaceNet     128, depth_multiplier 0.75
V1_ENDPOINT_TABLE = """
endpoint             os32         os16         os8          facenet
Conv2d_0             112x112x32   112x112x32   112x112x32   64x64x24
Conv2d_1_depthwise   112x112x32   112x112x32   112x112x32   64x64x24
Conv2d_1_pointwise   112x112x64   112x112x64   112x112x64   64x64x48
Conv2d_2_depthwise   56x56x64     56x56x64     56x56x64     32x32x48
Conv2d_2_pointwise   56x56x128    56x56x128    56x56x128    32x32x96
Conv2d_3_depthwise   56x56x128    56x56x128    56x56x128    32x32x96
Conv2d_3_pointwise   56x56x128    56x56x128    56x56x128    32x32x96
Conv2d_4_depthwise   28x28x128    28x28x128    28x28x128    16x16x96
Conv2d_4_pointwise   28x28x256    28x28x256    28x28x256    16x16x192
Conv2d_5_depthwise   28x28x256    28x28x256    28x28x256    16x16x192
Conv2d_5_pointwise   28x28x256    28x28x256    28x28x256    16x16x192
Conv2d_6_depthwise   14x14x256    14x14x256    28x28x256    8x8x192
Conv2d_6_pointwise   14x14x512    14x14x512    28x28x512    8x8x384
Conv2d_7_depthwise   14x14x512    14x14x512    28x28x512    8x8x384
Conv2d_7_pointwise   14x14x512    14x14x512    28x28x512    8x8x384
Conv2d_8_depthwise   14x14x512    14x14x512    28x28x512    8x8x384
Conv2d_8_pointwise   14x14x512    14x14x512    28x28x512    8x8x384
Conv2d_9_depthwise   14x14x512    14x14x512    28x28x512    8x8x384
Conv2d_9_pointwise   14x14x512    14x14x512    28x28x512    8x8x384
Conv2d_10_depthwise  14x14x512    14x14x512    28x28x512    8x8x384
Conv2d_10_pointwise  14x14x512    14x14x512    28x28x512    8x8x384
Conv2d_11_depthwise  14x14x512    14x14x512    28x28x512    8x8x384
Conv2d_11_pointwise  14x14x512    14x14x512    28x28x512    8x8x384
Conv2d_12_depthwise  7x7x512      14x14x512    28x28x512    4x4x384
Conv2d_12_pointwise  7x7x1024     14x14x1024   28x28x1024   4x4x768
Conv2d_13_depthwise  7x7x1024     14x14x1024   28x28x1024   4x4x768
Conv2d_13_pointwise  7x7x1024     14x14x1024   28x28x1024   4x4x768
"""


def _parse_table(text):
  header, *rows = [line.split() for line in text.strip().splitlines()]
  columns = {col: {} for col in header[1:]}
  for name, *cells in rows:
    for col, cell in zip(header[1:], cells):
      columns[col][name] = tuple(int(n) for n in cell.split("x"))
  return columns


V1_ENDPOINT_SHAPES = _parse_table(V1_ENDPOINT_TABLE)
V1_ENDPOINT_NAMES = ["Conv2d_0"] + [f"Conv2d_{i}_{kind}" for i in range(1, 14)
                                    for kind in ("depthwise", "pointwise")]

V1_ENDPOINT_CASES = [
    # mobilenet_v1_test.py: testBuildAndCheckAllEndPointsUptoConv2d_13
    pytest.param(v1((224, 224)), "os32", id="224"),
    # mobilenet_v1_test.py: testOutputStride16BuildAndCheckAllEndPointsUptoConv2d_13
    pytest.param(v1((224, 224), output_stride=16), "os16", id="224-os16"),
    # mobilenet_v1_test.py: testOutputStride8BuildAndCheckAllEndPointsUptoConv2d_13
    pytest.param(v1((224, 224), output_stride=8), "os8", id="224-os8"),
    # mobilenet_v1_test.py: testBuildAndCheckAllEndPointsApproximateFaceNet
    pytest.param(v1((128, 128), alpha=0.75), "facenet", id="128-alpha0.75"),
]


@pytest.mark.parametrize("cfg,column", V1_ENDPOINT_CASES)
def test_v1_every_endpoint_shape(cfg, column):
  assert _endpoints(cfg) == V1_ENDPOINT_SHAPES[column]


def test_v1_endpoint_names():
  # mobilenet_v1_test.py: testBuildBaseNetwork (assertItemsEqual on the keys)
  assert sorted(_endpoints(v1((224, 224)))) == sorted(V1_ENDPOINT_NAMES)


V1_FEATURE_MAP_CASES = [
    # mobilenet_v1_test.py: testBuildBaseNetwork (net of mobilenet_v1_base)
    pytest.param(v1((224, 224)), None, (7, 7, 1024), id="base-224"),
    # mobilenet_v1_test.py: testHalfSizeImages (end_points['Conv2d_13_pointwise'])
    pytest.param(v1((112, 112)), "Conv2d_13_pointwise", (4, 4, 1024), id="half-112"),
    # mobilenet_v1_test.py: testUnknownImageShape (slim: [2, None, None, 3]
    # placeholder fed 224x224; static here)
    pytest.param(v1((224, 224)), "Conv2d_13_pointwise", (7, 7, 1024), id="unknown-224"),
    # mobilenet_v1_test.py: testGlobalPoolUnknownImageShape (placeholder fed 250x300)
    pytest.param(v1((250, 300)), "Conv2d_13_pointwise", (8, 10, 1024), id="250x300"),
]


@pytest.mark.parametrize("cfg,endpoint,expected", V1_FEATURE_MAP_CASES)
def test_v1_feature_map(cfg, endpoint, expected):
  """endpoint None: the network's own output (include_top=False)."""
  got = _feature_map(cfg) if endpoint is None else _endpoints(cfg)[endpoint]
  assert got == expected


V1_DEPTH_RATIO_CASES = [
    # mobilenet_v1_test.py: testBuildEndPointsWithDepthMultiplierLessThanOne
    pytest.param(0.5, id="alpha0.5"),
    # mobilenet_v1_test.py: testBuildEndPointsWithDepthMultiplierGreaterThanOne
    pytest.param(2.0, id="alpha2.0"),
]


@pytest.mark.parametrize("alpha", V1_DEPTH_RATIO_CASES)
def test_v1_depth_multiplier_scales_every_endpoint(alpha):
  """Slim: for every 'Conv*' endpoint at 224, depth(alpha) == alpha * depth(1.0)."""
  base = _endpoints(v1((224, 224)))
  scaled = _endpoints(v1((224, 224), alpha=alpha))
  keys = [k for k in base if k.startswith("Conv")]
  assert keys
  assert {k: scaled[k][2] for k in keys} == {k: alpha * base[k][2] for k in keys}


# ---------------------------------------------------------------- MobileNet V2

# Slim reads ep['layer_18/output']: the tf.identity(name='output') that ends
# each expanded_conv, the same tensor as ep['layer_18'] (slim has both keys,
# and so do ours).
V2_IMAGE_SIZE_CASES = [
    # mobilenet_v2_test.py: testImageSizes (ep['layer_18/output'] H, W only)
    pytest.param(size, out, id=str(size))
    for size, out in [(224, 7), (192, 6), (160, 5), (128, 4), (96, 3)]
]


@pytest.mark.parametrize("size,out", V2_IMAGE_SIZE_CASES)
def test_v2_image_sizes(size, out):
  assert _endpoints(v2((size, size)))["layer_18/output"][:2] == (out, out)


V2_FEATURE_MAP_CASES = [
    # mobilenet_v2_test.py: testWithOutputStride8 (mobilenet.mobilenet_base, H, W only)
    pytest.param(v2((224, 224), output_stride=8), (28, 28), id="os8"),
    # mobilenet_v2_test.py: testWithOutputStride16 (mobilenet.mobilenet_base, H, W only)
    pytest.param(v2((224, 224), output_stride=16), (14, 14), id="os16"),
    # mobilenet_v2_test.py: testMobilenetBase (depth_multiplier 0.1, min_depth 32
    # by arg scope, finegrain off: the last conv is 1280 * 0.1 = 128)
    pytest.param(v2((224, 224), alpha=0.1, min_depth=32), (7, 7, 128), id="base-alpha0.1"),
]


@pytest.mark.parametrize("cfg,expected", V2_FEATURE_MAP_CASES)
def test_v2_feature_map(cfg, expected):
  """The network's output (slim's mobilenet_base net = layer_19); slim
  compares H, W only where `expected` has two entries."""
  assert _feature_map(cfg)[:len(expected)] == expected


def _conv2d_depths(eps):
  """Slim's set of Conv2D output depths without the logits: the stem
  (layer_1), each expansion (layer_k/expansion_output), each projection
  (layer_k, k = 2..18) and the last 1x1 conv (layer_19). Depthwise outputs
  are DepthwiseConv2dNative in slim, not Conv2D, so they are left out."""
  return {shape[2] for key, shape in eps.items()
          if "/" not in key or key.endswith("/expansion_output")}


V2_DEPTH_SET_CASES = [
    # mobilenet_v2_test.py: testDivisibleBy (divisible_by 16, min_depth 32; slim's
    # set also holds 1001, the logits)
    pytest.param(v2((224, 224), divisible_by=16, min_depth=32),
                 {32, 64, 96, 160, 192, 320, 384, 576, 960, 1280}, id="divisible16"),
    # mobilenet_v2_test.py: testDivisibleByWithArgScope (depth_multiplier 0.1,
    # min_depth 32 by arg scope; slim's set also holds 1001)
    pytest.param(v2((224, 224), alpha=0.1, min_depth=32), {32, 192, 128}, id="alpha0.1-min32"),
    # mobilenet_v2_test.py: testFineGrained (depth_multiplier 0.01,
    # finegrain_classification_mode True; slim's set also holds 1001)
    pytest.param(v2((224, 224), alpha=0.01, finegrain_classification_mode=True),
                 {8, 48, 1280}, id="finegrain-alpha0.01"),
]


@pytest.mark.parametrize("cfg,expected", V2_DEPTH_SET_CASES)
def test_v2_conv_depths(cfg, expected):
  assert _conv2d_depths(_endpoints(cfg)) == expected


def test_v2_depthwise_endpoints_exposed():
  # mobilenet_v2_test.py: testCreation ("Check that depthwise are exposed")
  eps = _endpoints(v2((224, 224)))
  for i in range(2, 17):
    assert f"layer_{i}/depthwise_output" in eps
