"""MobileNetV2's Figure 1 toy: ReLU on a spiral embedded in n dimensions."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mobilenet_jax.studies import manifold
from mobilenet_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_spiral_is_centred_and_scaled():
  points = manifold.spiral(100)
  assert points.shape == (100, 2) and points.dtype == np.float64
  np.testing.assert_allclose(points.mean(axis=0), 0, atol=1e-12)
  assert np.abs(points).max() < 2 * manifold.MAX_RADIUS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relu_error_falls_as_n_grows(seed):
  points = manifold.spiral(60)
  # 30 trials: enough that a rare nearly singular T does not decide the order.
  means = [manifold.trial_errors(points, n, "relu", 30, seed).mean() for n in (2, 5, 30)]
  assert means[0] > means[1] > means[2], means


@pytest.mark.parametrize("n", [2, 3, 30])
def test_linear_recovers_the_spiral(n):
  points = manifold.spiral(60)
  for k in range(5):
    back = manifold.reconstruct(points, n, "linear", manifold.seeded(0, n, k))
    np.testing.assert_allclose(back, points, atol=1e-10)
    assert manifold.error(points, back) < 1e-20


def test_relu_at_n2_loses_a_substantial_part():
  points = manifold.spiral(60)
  errors = manifold.trial_errors(points, 2, "relu", 30, seed=0)
  # Also after the best affine fit: not just a change of scale.
  aligned = manifold.trial_errors(points, 2, "relu", 30, 0, manifold.aligned_error)
  assert np.median(errors) > 0.1 and np.median(aligned) > 0.1


def test_unknown_activation_is_a_config_error():
  with pytest.raises(ConfigError, match="gelu"):
    manifold.reconstruct(manifold.spiral(10), 3, "gelu", manifold.seeded(0))


def command(out, *extra):
  return subprocess.run(
      [sys.executable, "-m", "mobilenet_jax.studies.manifold", "--out", str(out), "--ns", "2,5,30",
       "--trials", "5", "--points", "50", *extra],
      cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_command_writes_the_same_files_twice(tmp_path):
  names = ("report.md", "spirals.png", "error_vs_n.png")
  runs = []
  for _ in range(2):
    r = command(tmp_path)
    assert r.returncode == 0, r.stderr
    runs.append({name: (tmp_path / name).read_bytes() for name in names})
  assert runs[0] == runs[1]
  report = runs[0]["report.md"].decode()
  assert "--trials 5" in report and "| 30 |" in report and "## Conclusion" in report


def test_bad_flag_is_one_line(tmp_path):
  r = command(tmp_path, "--trials", "1")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == ["error: --trials=1: need at least 2 for a spread."]
