"""The summary command, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def summary(*args):
  return subprocess.run([sys.executable, "-m", "mobilenet_jax.tools.summary", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_json_totals_match_keras_counts():
  r = summary("--config", "configs/mobilenet_v2.py:1.0_224", "--json")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert (out["params"], out["trainable_params"]) == (3_538_984, 3_504_872)
  assert round(out["madds"] / 1e6) == 301


def test_table_has_the_paper_rows():
  r = summary("--config", "configs/mobilenet_v2.py:1.0_224")
  assert r.returncode == 0, r.stderr
  rows = [l.split() for l in r.stdout.splitlines() if "bottleneck" in l]
  # Table 2 of the V2 paper: (t, c, n, s) per row.
  assert [tuple(int(v) for v in row[2:6]) for row in rows] == [
      (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
  assert "Total params 3,538,984" in r.stdout


@pytest.mark.parametrize("override,words", [
    ("--config.model.alpha=0", ["model.alpha"]),
    ("--config.model.bottleneck_activation=gelu", ["bottleneck_activation", "'linear'"]),
    ("--config.image_size=16", ["image_size=16", ">= 32"]),
    ("--config.model.nope=1", ["'model.nope'", "bottleneck_activation"]),
])
def test_bad_knob_is_one_line_and_nonzero(override, words):
  r = summary("--config", "configs/default.py", override)
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
  for word in words:
    assert word in lines[0]
