"""Parameter counts and multiply-adds against the papers and Keras
(docs/conformance.md), and the analytic counts of madds.py
against what `init` creates and what XLA's cost analysis counts."""

import jax
import jax.numpy as jnp
import pytest

from mobilenet_jax import madds
from mobilenet_jax.models import get_model

# Keras Applications, 1000 classes, include_top: (total, trainable or None).
KERAS_PARAMS = {
    ("mobilenet_v1", 1.0): (4_253_864, 4_231_976),
    ("mobilenet_v1", 0.75): (2_601_976, 2_585_560),
    ("mobilenet_v1", 0.5): (1_342_536, 1_331_592),
    ("mobilenet_v1", 0.25): (475_544, 470_072),
    ("mobilenet_v2", 1.4): (6_156_712, None),
    ("mobilenet_v2", 1.3): (5_431_048, None),
    ("mobilenet_v2", 1.0): (3_538_984, 3_504_872),
    ("mobilenet_v2", 0.75): (2_663_064, None),
    ("mobilenet_v2", 0.5): (1_987_224, None),
    ("mobilenet_v2", 0.35): (1_691_208, None),
}

# Paper tables: (model config, image size, MAdds in millions, params in millions).
PAPER_MADDS = [
    (dict(name="mobilenet_v1", conv_type="full"), 224, 4866, 29.3),  # V1 Table 4
    (dict(name="mobilenet_v1"), 224, 569, 4.2),                      # Tables 4, 6
    (dict(name="mobilenet_v1", alpha=0.75), 224, 325, 2.6),          # Tables 5, 6
    (dict(name="mobilenet_v1", shallow=True), 224, 307, 2.9),        # Table 5
    (dict(name="mobilenet_v1", alpha=0.5), 224, 149, 1.3),           # Table 6
    (dict(name="mobilenet_v1", alpha=0.25), 224, 41, 0.5),
    (dict(name="mobilenet_v1"), 192, 418, 4.2),                      # Table 7
    (dict(name="mobilenet_v1"), 160, 290, 4.2),
    (dict(name="mobilenet_v1"), 128, 186, 4.2),
    (dict(name="mobilenet_v2"), 224, 300, 3.4),                      # V2 / TF-slim
    (dict(name="mobilenet_v2"), 192, 221, None),
    (dict(name="mobilenet_v2"), 160, 154, None),
    (dict(name="mobilenet_v2"), 128, 99, None),
    (dict(name="mobilenet_v2"), 96, 56, None),
    (dict(name="mobilenet_v2", alpha=1.4), 224, 582, None),
    (dict(name="mobilenet_v2", alpha=0.35), 224, 59, None),
]


def init_shapes(model_config, size):
  model = get_model(model_config)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,alpha", sorted(KERAS_PARAMS))
def test_params_equal_keras_applications(name, alpha):
  total, trainable = KERAS_PARAMS[(name, alpha)]
  variables = init_shapes(dict(name=name, alpha=alpha), 224)
  assert count(variables) == total
  assert madds.count(dict(name=name, alpha=alpha), 224)["params"] == total
  if trainable is not None:
    assert count(variables["params"]) == trainable


@pytest.mark.parametrize("model_config,size,madds_m,params_m", PAPER_MADDS)
def test_madds_within_one_percent_of_papers(model_config, size, madds_m, params_m):
  counts = madds.count(model_config, size)
  assert counts["madds"] / 1e6 == pytest.approx(madds_m, rel=0.01)
  if params_m is not None:
    # The papers count conv and dense weights, without batch norm, to one
    # decimal (V2's 3.47M is printed as 3.4M); BN has as many trainable as
    # moving-statistics variables, so weights = 2 * trainable - total.
    weights = 2 * counts["trainable_params"] - counts["params"]
    assert weights / 1e6 == pytest.approx(params_m, abs=0.08)


# Settings away from the tables, to catch a rule that only holds at defaults.
SPREAD = [
    (dict(name="mobilenet_v1", alpha=0.3, num_classes=10), 97),
    (dict(name="mobilenet_v1", depth_multiplier=2, alpha=0.5), 64),
    (dict(name="mobilenet_v1", conv_type="full", alpha=0.25, include_top=False), 33),
    (dict(name="mobilenet_v1", shallow=True, alpha=0.6), 150),
    (dict(name="mobilenet_v2", alpha=0.6, expansion=4.0, num_classes=3), 97),
    (dict(name="mobilenet_v2", alpha=1.7), 40),
    (dict(name="mobilenet_v2", blocks=((1, 16, 1, 1), (3, 24, 3, 2), (6, 40, 2, 2))), 64),
    (dict(name="mobilenet_v2", include_top=False, shortcut="expansion"), 150),
]


@pytest.mark.parametrize("model_config,size", SPREAD)
def test_analytic_params_equal_init(model_config, size):
  variables = init_shapes(model_config, size)
  counts = madds.count(model_config, size)
  assert counts["params"] == count(variables)
  assert counts["trainable_params"] == count(variables["params"])


@pytest.mark.parametrize("model_config,size", [
    (dict(name="mobilenet_v1", alpha=0.25, conv_type="full"), 224),
    (dict(name="mobilenet_v1", alpha=0.5, depth_multiplier=2), 128),
    (dict(name="mobilenet_v2", alpha=1.0, expansion=3.0), 128),
    # Dilated backbones: the counts follow the larger feature maps.
    (dict(name="mobilenet_v2", output_stride=16), 160),
    (dict(name="mobilenet_v1", alpha=0.5, output_stride=8, padding="same"), 128),
])
def test_analytic_madds_agree_with_xla_cost_analysis(model_config, size):
  """XLA counts 2 flops per multiply-add plus a few per element for batch norm
  and activations, and skips taps that fall into padding (most in full 3x3
  convs on the last 7x7 maps): within 10%. The network is built from XLA's
  convolutions: XLA does not count inside the native kernels' custom calls (the
  depthwise layers and the stem)."""
  model_config = dict(model_config, depthwise_impl="lax")
  model = get_model(model_config)
  variables = init_shapes(model_config, size)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  cost = jax.jit(model.apply).lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  ratio = cost["flops"] / 2 / madds.count(model_config, size)["madds"]
  assert 0.92 < ratio < 1.10
