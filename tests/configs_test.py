"""Every config in configs/ loads, builds its model and counts it."""

import glob
import os
import runpy
import subprocess
import sys

import pytest

from mobilenet_jax import madds
from mobilenet_jax.models import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not p.endswith("__init__.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds_its_model(path):
  config = runpy.run_path(path)["get_config"]()
  get_model(config.model)
  assert madds.count(config.model, config.image_size)["madds"] > 0
  assert config.image_size >= 32


@pytest.mark.parametrize("variant,alpha,size", [("0.35_160", 0.35, 160), ("1.4_224", 1.4, 224)])
def test_imagenet_variants(variant, alpha, size):
  config = runpy.run_path(os.path.join(ROOT, "configs", "mobilenet_v2.py"))["get_config"](variant)
  assert (config.model.alpha, config.image_size) == (alpha, size)
  assert config.optimizer == "rmsprop_tf" and config.dataset == "imagenet2012"


def test_bad_variant_names_the_format():
  get_config = runpy.run_path(os.path.join(ROOT, "configs", "mobilenet_v1.py"))["get_config"]
  with pytest.raises(ValueError, match="'alpha_size'"):
    get_config("big")


def test_models_and_train_step_import_without_tensorflow():
  """GPU benchmark machines have JAX but no TensorFlow (DESIGN.md)."""
  code = ("import sys; import mobilenet_jax.training.steps, mobilenet_jax.data.synthetic, "
          "mobilenet_jax.madds, mobilenet_jax.parallel; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
