"""experiments/colab_tpu.ipynb, executed headlessly on CPU with a smoke sweep."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_colab_notebook_runs_a_smoke_sweep_and_shows_the_report(tmp_path, monkeypatch):
  monkeypatch.setenv("MOBILENET_JAX_DIR", ROOT)  # this checkout, no clone
  monkeypatch.setenv("SMOKE", "1")
  monkeypatch.setenv("WORKDIR", str(tmp_path / "runs"))
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  nb = nbformat.read(os.path.join(ROOT, "experiments", "colab_tpu.ipynb"), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  text = "".join(o.get("text", "") for o in outputs)
  assert "2 devices" in text
  assert "run 3/3 relu/seed_0" in text
  shown = [o for o in outputs if o.get("output_type") == "display_data"]
  assert any("text/markdown" in o["data"] and "| linear |" in o["data"]["text/markdown"]
             for o in shown)
  assert any("image/png" in o["data"] for o in shown)
  assert os.path.exists(tmp_path / "runs" / "report" / "report.md")
