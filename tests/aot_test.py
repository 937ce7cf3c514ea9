"""mobilenet_jax.tools.aot: the real train and eval steps compiled for TPUs and GPUs
this host does not have (libtpu's compile-only devices, the CUDA plugin's
deviceless compiler). A TPU compile failure fails these tests."""

import json
import os
import platform
import subprocess
import sys

import jax
import pytest

from conftest import ROOT
from mobilenet_jax import cli, madds
from mobilenet_jax.tools import aot
from mobilenet_jax.errors import ConfigError
from mobilenet_jax.ops import depthwise
from mobilenet_jax.training import steps

LINUX_X86 = sys.platform == "linux" and platform.machine() == "x86_64"
needs_tpu_compiler = pytest.mark.skipif(
    not LINUX_X86, reason="libtpu is built for Linux x86-64 only")
DEFAULT = os.path.join(ROOT, "configs", "default.py")
V2_RECIPE = os.path.join(ROOT, "configs", "mobilenet_v2.py") + ":1.0_224"
TPU_RECIPE = os.path.join(ROOT, "configs", "tpu.py")  # V2 1.0_224, 128 per chip, bf16


def run_aot(*args):
  return subprocess.run([sys.executable, "-m", "mobilenet_jax.tools.aot", *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=900)


def one_error_line(proc) -> str:
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr + proc.stdout
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-2000:]
  return errors[0]


# ------------------------------------------------- compile for the target ---

def test_auto_picks_kernels_for_the_programs_platform_not_the_hosts():
  assert depthwise.resolve_impl("auto", "tpu") == "lax"
  assert depthwise.resolve_impl("auto", "gpu") == "lax"
  assert depthwise.resolve_impl("auto", "cpu") in ("native", "shift")
  config = cli.load_config(DEFAULT)
  train_model, eval_model = steps.config_models(config, "tpu")
  assert train_model.depthwise_impl == eval_model.depthwise_impl == "lax"
  with pytest.raises(ConfigError, match="CPU kernel.*for tpu"):
    depthwise.resolve_impl("native", "tpu")


# ------------------------------------------------------------- bad input ---

def test_unknown_target_is_one_line_naming_the_choices():
  line = one_error_line(run_aot("--config", DEFAULT, "--targets", "v9x-1"))
  assert "unknown target 'v9x-1'" in line and "v5e-1" in line and "h100" in line


def test_a_missing_tpu_compiler_is_one_line_naming_the_install(monkeypatch):
  real = aot.importlib.util.find_spec
  monkeypatch.setattr(aot.importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  with pytest.raises(ConfigError, match=r"needs libtpu.*pip install -e '\.\[tpu\]'"):
    aot.check_backend(aot.CHIPS["v5e-1"])


def test_a_missing_cuda_plugin_is_one_line_even_without_its_parent_package(monkeypatch):
  """Colab's runtime has no jax_plugins package at all: find_spec of its child raises."""
  real = aot.importlib.util.find_spec
  def find_spec(name, *a):
    if name.startswith("jax_plugins"):
      raise ModuleNotFoundError("No module named 'jax_plugins'")
    return real(name, *a)
  monkeypatch.setattr(aot.importlib.util, "find_spec", find_spec)
  with pytest.raises(ConfigError, match=r"needs jax-cuda12-plugin.*'\.\[gpu-aot\]'"):
    aot.check_backend(aot.CHIPS["h100"])


def test_too_old_a_jax_is_one_line_naming_the_upgrade(monkeypatch):
  """Colab's jax 0.7.2 segfaults after a compile-only compile (docs/design.md)."""
  monkeypatch.setattr(aot, "jax_version", lambda: (0, 7))
  monkeypatch.setattr(aot.importlib.util, "find_spec", lambda name, *a: object())
  with pytest.raises(ConfigError, match=r"needs jax >= 0\.10 .*pip install -U 'jax\[tpu\]'"):
    aot.check_backend(aot.CHIPS["v5e-1"])


def test_roofline_names_the_binding_limit():
  chip = aot.CHIPS["v5e-1"]
  memory = aot.roofline(chip, "bfloat16", flops=1e9, nbytes=819e9)
  assert memory["bound"] == "memory" and memory["seconds"] == pytest.approx(1.0)
  compute = aot.roofline(chip, "bfloat16", flops=197e12, nbytes=1e6)
  assert compute["bound"] == "compute" and compute["seconds"] == pytest.approx(1.0)
  h100 = aot.CHIPS["h100"]
  assert aot.roofline(h100, "float32", 495e12, 0)["seconds"] == pytest.approx(1.0)
  assert aot.roofline(h100, "bfloat16", 989e12, 0)["seconds"] == pytest.approx(1.0)


@pytest.mark.parametrize("per_image,curve", [(1e6, 0.0), (1e6, 2e-4)])
def test_largest_batch_finds_the_edge_of_hbm(monkeypatch, per_image, curve):
  """The search on a stand-in compiler whose memory is 1 GiB plus `per_image`
  bytes an image, growing faster than linearly with `curve` (so the linear
  guess overshoots and the bisection must find the edge)."""
  chip = aot.CHIPS["v5e-1"]
  used = lambda b: aot.GIB + per_image * b * (1 + curve * b)
  monkeypatch.setattr(aot, "compile_program", lambda fn, args: args[1]["image"].shape[0])
  monkeypatch.setattr(aot, "hbm", lambda batch: {"total": used(batch)})

  mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
  programs = aot.Programs(None, None, None, None, mesh, cli.load_config(DEFAULT))
  largest = aot.largest_batch(programs, chip, 64, used(64))
  assert used(largest) <= chip.hbm_bytes
  assert used(largest * 1.03) > chip.hbm_bytes  # within the 2% it promises (and 8)
  assert aot.smaller_batch_that_fits(programs, chip, 200_000) == pytest.approx(largest, rel=0.03)


# ------------------------------------------------------------ TPU compiles ---

def check_train_figures(row, config):
  """The compiled program is the real step: it fits, and its flops per image
  are those of a forward and backward pass (about 3 x 2 x the MAdds)."""
  assert row["compiles"] and row["fits"], row
  assert 0 < row["hbm"]["total"] < row["hbm_capacity"]
  forward = 2 * madds.count(config.model, config.image_size)["madds"]
  assert 2.0 * forward < row["flops_per_image"] < 4.5 * forward, (row, forward)
  assert row["bytes_per_image"] > 0
  assert row["compiler_img_per_s"] > 0 and row["roofline_img_per_s"] > 0
  # The compiler's estimate cannot beat the roofline of the same program by much.
  assert row["compiler_img_per_s"] < 1.5 * row["roofline_img_per_s"]


@needs_tpu_compiler
@pytest.mark.slow
@pytest.mark.parametrize("spec,dtype", [(DEFAULT, "float32"), (DEFAULT, "bfloat16"),
                                        (V2_RECIPE, "float32"), (TPU_RECIPE, "bfloat16")],
                         ids=["default-f32", "default-bf16", "v2_1.0_224-f32",
                              "tpu_v2_1.0_224-bf16"])
def test_train_and_eval_steps_compile_for_a_v5e(spec, dtype):
  config = cli.load_config(spec)
  chip = aot.CHIPS["v5e-1"]
  row = aot.analyse(config, chip, dtype, aot.devices(chip), fit=False)
  assert row["device_kind"] == "TPU v5 lite" and row["chips"] == 1
  check_train_figures(row, config)
  assert row["eval_hbm"] > 0 and row["eval_compiler_img_per_s"] > 0
  assert sum(row["traffic"].values()) > 0.5 * row["bytes_per_image"]


@needs_tpu_compiler
@pytest.mark.slow
def test_compiles_for_a_multi_host_slice_and_writes_the_table(tmp_path):
  """A v5e 4x4 slice: 16 chips on 4 hosts, the mesh over all of them."""
  out = tmp_path / "aot.json"
  proc = run_aot("--config", DEFAULT, "--targets", "v5e-16", "--dtypes", "bfloat16",
                 "--nofit", "--json", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| v5e-16 | 16 | bfloat16 | 64 | yes |" in proc.stdout
  assert "not measurements" in proc.stdout
  (row,) = json.loads(out.read_text())
  assert row["hosts"] == 4 and row["chips"] == 16
  check_train_figures(row, cli.load_config(DEFAULT))


@needs_tpu_compiler
@pytest.mark.slow
def test_a_batch_that_does_not_fit_is_one_line():
  proc = run_aot("--config", DEFAULT, "--targets", "v5e-1", "--dtypes", "float32",
                 "--config.per_device_batch_size=200000", "--nofit")
  line = one_error_line(proc)
  assert line == ("error: per_device_batch_size=200000 does not fit on v5e-1 in float32; "
                  "lower --config.per_device_batch_size.")


# ------------------------------------------------------------ GPU compiles ---

@pytest.mark.slow
@pytest.mark.skipif(tuple(map(int, jax.__version__.split(".")[:2])) < (0, 9),
                    reason="deviceless GPU compilation needs jax >= 0.9")
@pytest.mark.skipif(
    not aot.installed("jax_plugins.xla_cuda12"),
    reason="needs pip install -e '.[gpu-aot]' (not in README's test command: the CUDA "
           "plugin logs 'Could not find cuda drivers' to stderr at every JAX start, which "
           "breaks the one-line errors the other tests check)")
def test_train_step_compiles_for_an_h100_without_one():
  config = cli.load_config(DEFAULT)
  chip = aot.CHIPS["h100"]
  row = aot.analyse(config, chip, "float32", aot.devices(chip), fit=False)
  assert row["device_kind"].startswith("NVIDIA H100")
  assert row["compiles"] and row["fits"] and row["hbm"]["total"] > 0
  assert row["compiler_step_s"] is None  # no cost model on GPU: not invented
  assert row["roofline_img_per_s"] is None  # nor a roofline without the bytes
  forward = 2 * madds.count(config.model, config.image_size)["madds"]
  assert 2.0 * forward < row["flops_per_image"] < 4.5 * forward
