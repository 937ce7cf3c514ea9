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
            "--batch_size=4", "--steps=2", "--warmup=0", "--mode={mode}"{extra}]
try:
  app.run(benchmark.main)
except SystemExit:
  pass
assert "tensorflow" not in sys.modules, "synthetic data imported TensorFlow"
"""


def run(mode, *extra):
  code = RUN.format(mode=mode, extra="".join(f", {a!r}" for a in extra))
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_json_has_the_figures_and_no_tensorflow_is_imported():
  result = run("both", "--rounds=2")
  for key in ("img_per_s", "step_ms_median", "compile_s", "peak_mem_mb"):
    assert result[key] > 0, key
  assert result["backend"] == "cpu" and result["device_kind"]
  assert result["num_devices"] == 4  # conftest's fake devices, all used
  for mode in ("train", "infer"):
    m = result[mode]
    assert m["step_ms_min"] <= m["step_ms_median"] <= m["step_ms_max"]
    assert abs(m["img_per_s"] - 4 / (m["step_ms_median"] / 1e3)) < 1e-6 * m["img_per_s"]
    assert m["timed_steps"] == 4  # 2 steps in each of 2 rounds, pooled
  assert result["img_per_s"] == result["train"]["img_per_s"]  # training leads
  assert result["madds"] > 0
  assert result["rounds"] == 2


def peer_run(train_img_s):
  return {"peer": "torch", "train": {"img_per_s": train_img_s, "step_ms_median": 1.0}}


def test_peer_ratios_are_medians_of_same_round_ratios():
  from mobilenet_jax import benchmark
  ours = [{"train": {"img_per_s": v}} for v in (10.0, 20.0, 12.0)]
  runs = [peer_run(5.0), peer_run(20.0), peer_run(10.0)]  # ratios 2.0, 1.0, 1.2
  entry = benchmark.combine_peer(runs, ours)
  assert entry["ratio_ours_to_peer"]["train"] == 1.2
  assert entry["ratio_range"]["train"] == [1.0, 2.0]
  assert entry["train"]["img_per_s"] == 10.0  # the peer's median over rounds
  assert entry["rounds"] == 3 and "failed_rounds" not in entry


def test_a_failed_peer_round_is_left_out_and_reported():
  from mobilenet_jax import benchmark
  ours = [{"train": {"img_per_s": 10.0}}] * 3
  runs = [peer_run(5.0), {"peer": "torch", "error": "Killed"}, peer_run(10.0)]
  entry = benchmark.combine_peer(runs, ours)
  assert entry["ratio_ours_to_peer"]["train"] == 1.5  # median of 2.0 and 1.0
  assert entry["rounds"] == 2 and entry["failed_rounds"] == ["Killed"]
  only_failures = benchmark.combine_peer([{"peer": "torch", "error": "x"}], ours[:1])
  assert only_failures["error"] == "x"
