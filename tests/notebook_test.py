"""experiments/colab_tpu.ipynb, executed headlessly on CPU with a smoke sweep:
on the digits, and with its CIFAR-10 recipe on CIFAR-10 prepared by TFDS's own
builder from fake files in CIFAR's binary format (no network here)."""

import os

import nbformat
import numpy as np
import pytest
import tensorflow_datasets as tfds
from nbclient import NotebookClient

from conftest import ROOT
from mobilenet_jax import defaults
from mobilenet_jax.data import datasets

pytestmark = pytest.mark.slow


def execute_notebook(tmp_path, monkeypatch, **env):
  """The notebook's cells run in a kernel on this checkout (no clone), on two
  fake devices; returns the outputs of its code cells."""
  monkeypatch.setenv("MOBILENET_JAX_DIR", ROOT)
  monkeypatch.setenv("SMOKE", "1")
  monkeypatch.setenv("WORKDIR", str(tmp_path / "runs"))
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  nb = nbformat.read(os.path.join(ROOT, "experiments", "colab_tpu.ipynb"), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def printed(outputs):
  return "".join(o.get("text", "") for o in outputs)


def shown(outputs):
  return [o for o in outputs if o.get("output_type") == "display_data"]


def test_colab_notebook_runs_a_smoke_sweep_and_shows_the_report(tmp_path, monkeypatch):
  outputs = execute_notebook(tmp_path, monkeypatch)
  text = printed(outputs)
  assert "2 devices" in text
  assert "run 3/3 relu/seed_0" in text
  assert any("text/markdown" in o["data"] and "| linear |" in o["data"]["text/markdown"]
             for o in shown(outputs))
  assert any("image/png" in o["data"] for o in shown(outputs))
  assert os.path.exists(tmp_path / "runs" / "report" / "report.md")


def write_fake_cifar10(folder, per_file=8, seed=0):
  """CIFAR-10's binary release in miniature: per record one label byte, then
  the 32x32 image as its red, green and blue planes."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder)
  with open(os.path.join(folder, "batches.meta.txt"), "w") as f:
    f.write("\n".join(f"class_{i}" for i in range(10)) + "\n")
  for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    labels = rng.integers(0, 10, (per_file, 1), dtype=np.uint8)
    planes = rng.integers(0, 256, (per_file, 3 * 32 * 32), dtype=np.uint8)
    np.concatenate([labels, planes], axis=1).tofile(os.path.join(folder, name))


def test_colab_notebook_cifar10_recipe_runs_on_tfds_cifar10(tmp_path, monkeypatch):
  # TFDS's cifar10 builder writes the set (ArrayRecord, as the trainer reads
  # it) from the fake release instead of the download Colab would make.
  release = tmp_path / "release"
  write_fake_cifar10(str(release / "cifar-10-batches-bin"))
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      lambda self, url: str(release))
  config = defaults.get_config()
  config.dataset, config.data_dir = "cifar10", str(tmp_path / "tfds")
  builder = datasets.get_builder(config)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 40, "test": 8}

  # The kernel and its sweep find it where Colab's download would put it.
  outputs = execute_notebook(tmp_path, monkeypatch, DATASET="cifar10",
                             TFDS_DATA_DIR=config.data_dir)
  text = printed(outputs)
  assert "dataset=cifar10" in text and "eval_split=test" in text
  assert "random_flip=True" in text and "run 3/3 relu/seed_0" in text
  report = open(tmp_path / "runs" / "report" / "report.md").read()
  assert "cifar10" in report
  assert any("text/markdown" in o["data"] and "| relu6 |" in o["data"]["text/markdown"]
             for o in shown(outputs))
