"""The GPU check's plumbing on the CPU, with tiny settings: one JSON with each
system's figures and ours/timm ratios. The JAX part runs everywhere; the timm
part where timm is installed (it needs torch and torchvision)."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT

TINY = ["--device=cpu", "--image_size=32", "--batch_size=4", "--steps=2", "--warmup=1"]
PRECISIONS = ("float32", "bfloat16")


def run(*args, env=None, timeout=300):
  return subprocess.run([sys.executable, "-m", "mobilenet_jax.tools.gpu_check", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        env=env)


@pytest.fixture(scope="module")
def check(tmp_path_factory):
  """(systems asked for, the process, the JSON) of one run of both systems, or of
  ours alone where timm is not installed: one run, about 50 s on 2 cores."""
  systems = "jax,timm" if importlib.util.find_spec("timm") else "jax"
  out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
  # One torch thread: beside another busy process (pytest -n 2) two threads
  # wait on each other at every op, and a 40 ms step takes seconds.
  env = dict(os.environ, OMP_NUM_THREADS="1")
  proc = run(*TINY, f"--systems={systems}", f"--out={out}", env=env)
  assert out.exists(), proc.stderr[-3000:]
  return systems, proc, json.loads(out.read_text())


def check_figures(entry):
  for key in ("img_per_s", "img_per_s_min", "img_per_s_max", "step_ms_median",
              "compile_s", "first_step_s"):
    assert math.isfinite(entry[key]) and entry[key] > 0, (key, entry[key])
  assert entry["img_per_s_min"] <= entry["img_per_s"] <= entry["img_per_s_max"]
  assert abs(entry["img_per_s"] - 4 / (entry["step_ms_median"] / 1e3)) < 1e-6 * entry["img_per_s"]
  assert entry["timed_steps"] == 2 and entry["warmup_steps"] == 1
  assert entry["warmup_s"] >= 0
  assert entry["params"] > 3_000_000  # MobileNetV2 1.0 with 1000 classes: 3.5M


@pytest.mark.slow
def test_ours_in_both_precisions_on_one_device(check):
  systems, proc, result = check
  if systems == "jax":
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "errors" not in result and set(result["results"]) == {"jax"}
    assert result["versions"]["timm"] is None
  assert result["device"] == "cpu" and result["device_name"]
  assert result["batch_size"] == 4 and result["image_size"] == 32
  assert result["versions"]["jax"] and result["versions"]["jaxlib"]
  ours = result["results"]["jax"]
  assert set(ours) == set(PRECISIONS)
  for precision, entry in ours.items():
    assert entry["precision"] == precision
    assert entry["num_devices"] == 1  # of conftest's 4 fake devices
    assert entry["xla_compile_s"] > 0
    check_figures(entry)
  assert ours["float32"]["params"] == ours["bfloat16"]["params"]


@pytest.mark.slow
def test_timm_in_both_precisions_and_the_ratios(check):
  pytest.importorskip("timm")
  systems, proc, result = check
  assert systems == "jax,timm"
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "errors" not in result
  assert result["versions"]["torch"] and result["versions"]["timm"]
  timm = result["results"]["timm"]
  assert set(timm) == set(PRECISIONS)
  for precision, entry in timm.items():
    check_figures(entry)
    assert entry["amp"] == ("torch.autocast bfloat16" if precision == "bfloat16" else None)
  # The same network: timm's mobilenetv2_100 has as many parameters as ours.
  assert timm["float32"]["params"] == result["results"]["jax"]["float32"]["params"]
  ratios = result["ratios_ours_to"]["timm"]
  assert set(ratios) == set(PRECISIONS)
  for precision, ratio in ratios.items():
    expected = (result["results"]["jax"][precision]["img_per_s"]
                / timm[precision]["img_per_s"])
    assert math.isfinite(ratio) and ratio > 0
    assert ratio == pytest.approx(expected)
  assert "ours/this" in proc.stdout  # the table


MISSING_TIMM = """
import sys
sys.modules["timm"] = None  # as if not installed: find_spec("timm") is None
from absl import app
from mobilenet_jax.tools import gpu_check
sys.argv = ["gpu_check", "--out={out}"]
app.run(gpu_check.main)
"""


def test_missing_timm_is_one_line_and_exit_2(tmp_path):
  out = tmp_path / "gpu_check.json"
  proc = subprocess.run([sys.executable, "-c", MISSING_TIMM.format(out=out)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert "timm" in lines[0] and "pip install timm" in lines[0] and "--systems=jax" in lines[0]
  assert not out.exists()  # it stopped before timing anything


def test_unknown_system_is_a_usage_error():
  proc = run("--systems=jax,keras", "--device=cpu", timeout=120)
  assert proc.returncode == 1 and "keras" in proc.stderr, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
