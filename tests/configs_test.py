"""Every shipped config against its paper row: MAdds, parameters, the recipe."""

import glob
import math
import os
import runpy
import subprocess
import sys

import pytest

from conformance_test import KERAS_PARAMS, PAPER_MADDS
from mobilenet_jax import defaults, madds, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not p.endswith("__init__.py"))

# The variants a user would run (None: the file's default, 1.0_224).
IMAGENET = {
    "mobilenet_v1.py": [None, "1.0_224", "0.75_224", "0.5_224", "0.25_224",
                        "1.0_192", "1.0_160", "1.0_128"],
    "mobilenet_v2.py": [None, "1.0_224", "1.0_192", "1.0_160", "1.0_128",
                        "1.0_96", "1.4_224", "0.35_224"],
    # The base both derive from, naming the network in its variant.
    "imagenet.py": [None, "v1_0.5_224", "v2_1.4_224"],
}
IMAGENET_CASES = [(f, v) for f, variants in IMAGENET.items() for v in variants]

# configs/default.py (8x8 digits at 32 px, 10 classes) has no paper row: its
# counts are pinned as madds.count gave them once, so any change shows here.
DIGITS_COUNTS = dict(params=719_034, trainable_params=700_490, madds=1_968_960)

# The papers' TF-slim ImageNet recipe (V2 paper, section 6.1: RMSProp with
# decay and momentum 0.9, lr 0.045 x0.98 per epoch, weight decay 4e-5, batch
# 96 per worker; Inception preprocessing, 0.875 central crop for evaluation).
RECIPE = dict(
    dataset="imagenet2012", train_split="train", eval_split="validation",
    train_augment="inception", random_flip=True, eval_preprocess="center_crop",
    per_device_batch_size=96, num_epochs=300.0, optimizer="rmsprop_tf",
    rmsprop_decay=0.9, momentum=0.9, rmsprop_epsilon=1.0, learning_rate=0.045,
    lr_schedule="exponential", lr_decay_rate=0.98, lr_decay_epochs=1.0,
    warmup_epochs=0.0, weight_decay=4e-5, label_smoothing=0.1, ema_decay=0.9999)

# How each paper prints parameters in millions: V1 rounds (0.46M -> 0.5),
# V2 truncates (3.47M -> 3.4).
PAPER_ROUNDING = {"mobilenet_v1": lambda m: round(m, 1),
                  "mobilenet_v2": lambda m: math.floor(m * 10) / 10}


def load(filename, variant=None):
  get_config = runpy.run_path(os.path.join(ROOT, "configs", filename))["get_config"]
  return get_config() if variant is None else get_config(variant)


def network(filename, variant):
  """(model name, alpha, size) that `filename`'s `variant` asks for."""
  if filename == "imagenet.py":
    family, _, variant = (variant or "v2_1.0_224").partition("_")
    filename = f"mobilenet_{family}.py"
  alpha, size = (variant or "1.0_224").split("_")
  return filename[:-3], float(alpha), int(size)


def paper_row(name, alpha, size):
  """(MAdds, params) in millions of the papers' row for the plain network."""
  for model, row_size, madds_m, params_m in PAPER_MADDS:
    if dict(model, alpha=model.get("alpha", 1.0)) == dict(name=name, alpha=alpha) \
        and row_size == size:
      return madds_m, params_m
  raise KeyError(f"no paper row for {name} {alpha} at {size}")


def test_every_config_file_is_checked_here():
  assert CONFIGS == sorted(["default.py", "tpu.py", *IMAGENET])


@pytest.mark.parametrize("variant,paper_file,paper_variant",
                         [(None, "mobilenet_v2.py", "1.0_224"),
                          ("v1_0.5_160", "mobilenet_v1.py", "0.5_160")])
def test_tpu_config_is_the_paper_recipe_at_128_per_chip_in_bfloat16(variant, paper_file,
                                                                     paper_variant):
  """configs/tpu.py changes only the per-chip batch (96 -> 128, the TPU's tile;
  docs/performance.md), the learning rate with it, and the compute dtype."""
  tpu, paper = load("tpu.py", variant), load(paper_file, paper_variant)
  defaults.validate(tpu)
  assert (tpu.per_device_batch_size, tpu.dtype) == (128, "bfloat16")
  assert tpu.learning_rate == pytest.approx(0.045 * 128 / 96)
  changed = {k for k in paper.keys() if tpu[k] != paper[k]}
  assert changed == {"per_device_batch_size", "learning_rate", "dtype"}
  with pytest.raises(ValueError, match="v2_ALPHA_SIZE"):
    load("tpu.py", "v3_1.0_224")


def test_v1_and_v2_configs_are_the_imagenet_base_with_their_network():
  """One recipe: the per-network files add nothing to configs/imagenet.py."""
  for family in ("v1", "v2"):
    assert load(f"mobilenet_{family}.py", "0.5_160") == load("imagenet.py", f"{family}_0.5_160")


def test_default_config_counts_are_pinned_and_valid():
  config = load("default.py")
  defaults.validate(config)
  assert madds.count(config.model, config.image_size) == DIGITS_COUNTS


@pytest.mark.parametrize("filename,variant", IMAGENET_CASES,
                         ids=[f"{f[:-3]}:{v}" for f, v in IMAGENET_CASES])
def test_imagenet_config_matches_its_paper_row(filename, variant):
  config = load(filename, variant)
  defaults.validate(config)
  name, alpha, size = network(filename, variant)
  # The paper's network: every knob at its default but the width.
  assert config.model.to_dict() == dict(models.default_config(name), alpha=alpha)
  assert config.image_size == size
  assert {k: config[k] for k in RECIPE} == RECIPE

  counts = madds.count(config.model, config.image_size)
  madds_m, params_m = paper_row(name, alpha, size)
  assert counts["madds"] / 1e6 == pytest.approx(madds_m, rel=0.01)
  if params_m is not None:
    # The papers count conv and dense weights, not batch norm; BN has as many
    # trainable as moving-statistics variables, so weights = 2 * trainable - total.
    weights = 2 * counts["trainable_params"] - counts["params"]
    assert PAPER_ROUNDING[name](weights / 1e6) == params_m
  total, trainable = KERAS_PARAMS[(name, alpha)]
  assert counts["params"] == total
  if trainable is not None:
    assert counts["trainable_params"] == trainable


def test_bad_variant_names_the_format():
  with pytest.raises(ValueError, match="'alpha_size'"):
    load("mobilenet_v1.py", "big")
  with pytest.raises(ValueError, match="v1_ALPHA_SIZE"):
    load("imagenet.py", "1.0_224")


def test_models_and_train_step_import_without_tensorflow():
  """GPU benchmark machines have JAX but no TensorFlow (docs/design.md, "GPU
  machines: JAX without TensorFlow")."""
  code = ("import sys; import mobilenet_jax.training.steps, mobilenet_jax.data.synthetic, "
          "mobilenet_jax.madds, mobilenet_jax.parallel, mobilenet_jax.defaults; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
