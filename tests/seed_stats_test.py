"""The statistics behind every report: the interval over seeds."""

import math

import pytest

from mobilenet_jax import seed_stats

T_975_2 = 4.302652729749462  # Student t, 97.5% quantile, 2 degrees of freedom


def test_interval_is_student_t_with_n_minus_1_dof():
  s = seed_stats.stats([1.0, 2.0, 3.0])  # std 1
  half = T_975_2 * 1 / math.sqrt(3)
  assert s["mean"] == 2 and s["n"] == 3
  assert s["lo"] == pytest.approx(2 - half) and s["hi"] == pytest.approx(2 + half)
  assert seed_stats.ci(s) == "[-0.48, 4.48]"
  one = seed_stats.stats([5.0])
  assert math.isnan(one["lo"]) and seed_stats.ci(one) == "n/a"
