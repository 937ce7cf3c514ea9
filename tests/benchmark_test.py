"""The benchmark command: its JSON figures, and no TensorFlow on synthetic data."""

import json
import subprocess
import sys

from conftest import ROOT

RUN = """
import sys
from absl import app
from mobilenet_jax import benchmark
sys.argv = ["benchmark", "--json", "--alpha=0.35", "--image_size=32",
            "--batch_size=4", "--steps=2", "--warmup=0", "--mode={mode}"]
try:
  app.run(benchmark.main)
except SystemExit:
  pass
assert "tensorflow" not in sys.modules, "synthetic data imported TensorFlow"
"""


def run(mode):
  proc = subprocess.run([sys.executable, "-c", RUN.format(mode=mode)], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_json_has_the_figures_and_no_tensorflow_is_imported():
  result = run("both")
  for key in ("img_per_s", "step_ms_median", "compile_s", "peak_mem_mb"):
    assert result[key] > 0, key
  assert result["backend"] == "cpu" and result["device_kind"]
  assert result["num_devices"] == 4  # conftest's fake devices, all used
  for mode in ("train", "infer"):
    m = result[mode]
    assert m["step_ms_min"] <= m["step_ms_median"] <= m["step_ms_max"]
    assert abs(m["img_per_s"] - 4 / (m["step_ms_median"] / 1e3)) < 1e-6 * m["img_per_s"]
  assert result["img_per_s"] == result["train"]["img_per_s"]  # training leads
  assert result["madds"] > 0
