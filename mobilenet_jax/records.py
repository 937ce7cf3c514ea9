"""The files a run and a sweep leave for the reports: written and read only here.

- `<run workdir>/results.json`: a finished run's final metrics and its
  evaluation history (training/loop.py; the Keras digits trainer writes the
  same format). Its presence marks the run done: ablate skips it.
- `<sweep workdir>/sweep.json`: what a sweep asks, its variants, seeds and
  command, and the commit its first run began at (ablate, keras_digits).

Both are written whole under a temporary name and renamed, so a crash never
leaves half a file that a resume or a report would read.
"""

import json
import os
from typing import Optional

RESULTS = "results.json"
SWEEP = "sweep.json"


def _write(path: str, value: dict, sort_keys: bool):
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2, sort_keys=sort_keys)
  os.replace(path + ".tmp", path)


def results_path(run_dir: str) -> str:
  return os.path.join(run_dir, RESULTS)


def has_results(run_dir: str) -> bool:
  return os.path.exists(results_path(run_dir))


def write_results(run_dir: str, results: dict):
  _write(results_path(run_dir), results, sort_keys=True)


def read_results(run_dir: str) -> dict:
  with open(results_path(run_dir)) as f:
    return json.load(f)


def read_sweep(workdir: str) -> Optional[dict]:
  """sweep.json, or None where the sweep has not written one."""
  path = os.path.join(workdir, SWEEP)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_sweep(workdir: str, record: dict):
  """Writes `record`; a resumed sweep keeps the commit its first runs began at."""
  os.makedirs(workdir, exist_ok=True)
  earlier = read_sweep(workdir)
  if earlier:
    record = dict(record, commit=earlier.get("commit", record.get("commit")))
  _write(os.path.join(workdir, SWEEP), record, sort_keys=False)
