"""The package as pip installs it (not editable), used from another directory:
what a user gets, without the checkout on the path."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

COMMANDS = ("main", "tools/ablate", "tools/report", "tools/convert", "tools/export",
            "tools/launch", "tools/summary", "tools/benchmark")
# absl's --help prints the usage and exits 1 (app.HelpFlag), before main runs.
HELP_STATUS = 1


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(site directory, environment, a working directory away from the checkout)."""
  tmp = tmp_path_factory.mktemp("install")
  # pip builds in the source tree (build/, *.egg-info): build a copy, so the
  # checkout, which may be building or testing elsewhere, is left alone.
  src = tmp / "src"
  anywhere = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info",
                                    ".pytest_cache")
  at_root = {"build", "runs"}  # a user's runs, not the package (training/workdir.py is)

  def ignore(directory, names):
    return set(anywhere(directory, names)) | (
        at_root & set(names) if os.path.samefile(directory, ROOT) else set())

  shutil.copytree(ROOT, src, ignore=ignore)
  site = tmp / "site"
  # --target and PYTHONPATH: the running environment (where the checkout is
  # installed editable) is not touched.
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "--no-build-isolation", "--target", str(site), str(src)],
                 check=True, capture_output=True, text=True, timeout=300)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # as a user runs it
  env["PYTHONPATH"] = str(site)
  elsewhere = tmp / "elsewhere"
  elsewhere.mkdir()
  return site, env, elsewhere


def run(installed, *args, timeout=300):
  _, env, elsewhere = installed
  return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_the_installed_package_is_imported_with_the_native_kernel_source(installed):
  site = installed[0]
  proc = run(installed, "-c", "import mobilenet_jax; print(mobilenet_jax.__file__)")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == str(site / "mobilenet_jax" / "__init__.py")
  # Compiled on first use from the installed source (ops/native.py).
  assert (site / "mobilenet_jax" / "ops" / "depthwise_cpu.cc").stat().st_size > 1000


def test_summary_of_a_config_file_names_the_papers_madds(installed):
  proc = run(installed, "-m", "mobilenet_jax.tools.summary", "--config",
             os.path.join(ROOT, "configs", "mobilenet_v2.py") + ":1.0_224")
  assert proc.returncode == 0, proc.stderr[-3000:]
  madds = re.search(r"MAdds [\d,]+ \(([\d.]+)M\) per image", proc.stdout)
  assert madds and abs(float(madds.group(1)) - 300) < 3, proc.stdout[-2000:]


def test_benchmark_acceptance_command(installed):
  """The acceptance command as given: V2 1.0 at 224, batch 32, train and inference."""
  proc = run(installed, "-m", "mobilenet_jax.tools.benchmark", "--steps", "2", timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[0].startswith("mobilenet_v2 alpha 1.0 @ 224, batch 32"), proc.stdout
  for mode in ("train", "infer"):
    row = next(l.split() for l in lines if l.split()[:2] == ["mobilenet_jax", mode])
    assert float(row[2]) > 0  # images per second


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(installed, command):
  proc = run(installed, "-m", f"mobilenet_jax.{command.replace('/', '.')}", "--help")
  assert proc.returncode == HELP_STATUS, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  # The command's own flags, listed under the installed module's file.
  assert f"site/mobilenet_jax/{command}.py:" in proc.stdout, proc.stdout[-2000:]
