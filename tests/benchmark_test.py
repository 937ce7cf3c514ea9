"""The benchmark command: its JSON figures, and no TensorFlow on synthetic data."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

RUN = """
import sys
from absl import app
from mobilenet_jax.tools import benchmark
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


@pytest.mark.slow
def test_json_has_the_figures_and_no_tensorflow_is_imported():
  result = run("both", "--rounds=2", "--variant=output_stride=16", "--vmap_seeds=3")
  for key in ("img_per_s", "step_ms_median", "compile_s", "peak_mem_mb"):
    assert result[key] > 0, key
  assert result["backend"] == "cpu" and result["device_kind"]
  assert result["num_devices"] == 4  # conftest's fake devices, all used
  # Training as the trainer runs it on CPU, 4 steps a call: --steps=2 times one
  # whole call a round, and its figures are per step.
  assert result["train"]["steps_per_call"] == 4 and "steps_per_call" not in result["infer"]
  for mode, timed_steps in (("train", 8), ("infer", 4)):
    m = result[mode]
    assert m["step_ms_min"] <= m["step_ms_median"] <= m["step_ms_max"]
    assert abs(m["img_per_s"] - 4 / (m["step_ms_median"] / 1e3)) < 1e-6 * m["img_per_s"]
    assert m["timed_steps"] == timed_steps  # over 2 rounds, pooled
    slowest, fastest = m["round_img_per_s"]  # each round's own median
    assert slowest <= fastest and slowest <= m["img_per_s"] * 1.5
  assert result["img_per_s"] == result["train"]["img_per_s"]  # training leads
  assert result["madds"] > 0
  assert result["rounds"] == 2
  # A dilated variant timed in the same rounds, compared per multiply-add.
  # 3 seeds' steps in one vmapped program: 3 batches per timed step.
  seeds = result["seeds"]
  assert seeds["seeds"] == 3 and seeds["timed_steps"] == 4
  assert abs(seeds["img_per_s"] - 12 / (seeds["step_ms_median"] / 1e3)) < 1e-6 * seeds["img_per_s"]
  low, high = seeds["speedup_range"]
  assert 0 < low <= seeds["speedup"] <= high
  variant, = result["variants"]
  assert variant["output_stride"] == 16 and variant["madds"] > result["madds"]
  for mode, timed_steps in (("train", 8), ("infer", 4)):
    assert variant[mode]["timed_steps"] == timed_steps
    expected = variant[mode]["gmadds_per_s"] / result[mode]["gmadds_per_s"]
    assert variant["per_madd_vs_base"][mode] == pytest.approx(expected)


def test_per_madd_ratio_compares_work_done_per_second():
  from mobilenet_jax.tools import benchmark
  base = {"train": {"gmadds_per_s": 2.0}}
  variant = {"train": {"gmadds_per_s": 3.0}, "infer": {"gmadds_per_s": 1.0}}
  assert benchmark.per_madd_ratios(variant, {**base, "infer": {"gmadds_per_s": 4.0}}) == {
      "train": 1.5, "infer": 0.25}


def test_inference_alone_times_only_inference():
  """The smallest real run of the command's path: a V1 forward pass."""
  result = run("infer", "--model=mobilenet_v1")
  assert (result["model"], result["alpha"], result["batch_size"]) == ("mobilenet_v1", 0.35, 4)
  assert "train" not in result and result["infer"]["timed_steps"] == 2
  assert result["img_per_s"] == result["infer"]["img_per_s"] > 0
  assert result["madds"] > 0 and result["rounds"] == 1


def peer_run(train_img_s):
  return {"peer": "torch", "train": {"img_per_s": train_img_s, "step_ms_median": 1.0}}


def test_host_cpu_names_the_model_and_the_flags_that_matter(monkeypatch, tmp_path):
  from mobilenet_jax import timing
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\ncpu family\t: 6\nmodel\t\t: 143\n"
                     "model name\t: Intel(R) Xeon(R) Gold 6438Y+\nstepping\t: 8\n"
                     "flags\t\t: fpu sse2 avx2 avx512f amx_tile amx_bf16\n")
  real_open = open
  monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
      cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
  assert timing.host_cpu() == {"model": "Intel(R) Xeon(R) Gold 6438Y+",
                               "id": "family 6, model 143, stepping 8",
                               "flags": ["avx2", "avx512f", "amx_tile", "amx_bf16"]}


def test_peer_ratios_are_medians_of_same_round_ratios():
  from mobilenet_jax.tools import benchmark
  ours = [{"train": {"img_per_s": v}} for v in (10.0, 20.0, 12.0)]
  runs = [peer_run(5.0), peer_run(20.0), peer_run(10.0)]  # ratios 2.0, 1.0, 1.2
  entry = benchmark.combine_peer(runs, ours)
  assert entry["ratio_ours_to_peer"]["train"] == 1.2
  assert entry["ratio_range"]["train"] == [1.0, 2.0]
  assert entry["train"]["img_per_s"] == 10.0  # the peer's median over rounds
  assert entry["train"]["round_img_per_s"] == [5.0, 20.0]  # its slowest and fastest
  assert entry["rounds"] == 3 and "failed_rounds" not in entry


def test_a_failed_peer_round_is_left_out_and_reported():
  from mobilenet_jax.tools import benchmark
  ours = [{"train": {"img_per_s": 10.0}}] * 3
  runs = [peer_run(5.0), {"peer": "torch", "error": "Killed"}, peer_run(10.0)]
  entry = benchmark.combine_peer(runs, ours)
  assert entry["ratio_ours_to_peer"]["train"] == 1.5  # median of 2.0 and 1.0
  assert entry["rounds"] == 2 and entry["failed_rounds"] == ["Killed"]
  only_failures = benchmark.combine_peer([{"peer": "torch", "error": "x"}], ours[:1])
  assert only_failures["error"] == "x"


def test_peer_timing_counts_only_the_timed_steps_and_summarizes_them():
  from mobilenet_jax import timing
  calls = []
  times = timing.time_steps(lambda: calls.append(1), warmup=2, steps=3)
  assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)
  assert timing.summarize([0.5, 0.25, 1.0], batch=8) == {
      "img_per_s": 16.0, "step_ms_median": 500.0, "step_ms_min": 250.0,
      "step_ms_max": 1000.0}
