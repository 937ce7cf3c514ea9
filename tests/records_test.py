"""results.json and sweep.json: one writer and reader for every producer."""

import glob
import os
import re

from conftest import ROOT
from mobilenet_jax import records


def test_results_round_trip_sorted_and_mark_the_run_done(tmp_path):
  assert not records.has_results(str(tmp_path))
  records.write_results(str(tmp_path), {"steps": 3, "eval_top1": 0.5})
  assert records.has_results(str(tmp_path))
  assert records.read_results(str(tmp_path)) == {"eval_top1": 0.5, "steps": 3}
  text = (tmp_path / "results.json").read_text()
  assert text.index('"eval_top1"') < text.index('"steps"')
  assert os.listdir(tmp_path) == ["results.json"]  # no temporary left behind


def test_a_resumed_sweep_keeps_the_commit_its_first_runs_began_at(tmp_path):
  assert records.read_sweep(str(tmp_path / "sweep")) is None
  records.write_sweep(str(tmp_path / "sweep"), {"name": "s", "commit": "aaa"})
  records.write_sweep(str(tmp_path / "sweep"), {"name": "s", "seeds": [1], "commit": "bbb"})
  assert records.read_sweep(str(tmp_path / "sweep")) == {"name": "s", "seeds": [1],
                                                         "commit": "aaa"}


def test_no_other_module_opens_the_records_by_name():
  """One writer per format: a second producer would show here."""
  named = re.compile(r"[\"'](results|sweep)\.json[\"']")
  found = sorted(os.path.relpath(path, ROOT)
                 for path in glob.glob(os.path.join(ROOT, "mobilenet_jax", "**", "*.py"),
                                       recursive=True)
                 if named.search(open(path).read()))
  assert found == ["mobilenet_jax/records.py"], found
