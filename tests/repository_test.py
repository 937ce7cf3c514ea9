"""What the committed files may hold: no absolute path of the machine a run,
a report or a notebook was made on.

A report cites the paths the README gives (runs/<name>, experiments/<name>),
not the directory the sweep happened to run in on one machine. Flagged: paths
that begin at a machine's work directory, a user's home directory (Linux's
home/<user>, macOS's Users/<name>, Windows' C:\\Users\\<name>), root's home,
and the temporary directories a machine names itself (pytest's
pytest-of-<user>, tempfile's tmpXXXXXXXX). Not flagged: the same words inside
a URL (https://host/work/...), relative paths (runs/x, ../x, ~/x), and the
scratch paths a usage example invites the reader to type (a tmp/run workdir,
a data/tfds data_dir), which name no machine. The patterns are assembled from
parts so that this file does not match itself.
"""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP = "/" + "tmp/"
MACHINE_PATH = re.compile(
    # At the start of a path: not inside a word, a URL, or a relative path.
    r"(?<![\w.~/-])(?:"
    + "|".join([
        "/" + r"work/",
        "/" + r"home/[^/\s]+/",
        "/" + r"root/",
        "/" + r"Users/[^/\s]+/",
        re.escape(TMP) + r"pytest-of-",
        re.escape(TMP) + r"tmp[a-z0-9_]{8}\b",
    ])
    + r")[^\s`'\")\]]*"
    + r"|(?<![\w])[A-Za-z]:\\\\?Users\\\\?[^\\\s]+\\")


def machine_paths(text: str):
  """(line number, path) for each machine path in `text`."""
  return [(text.count("\n", 0, m.start()) + 1, m.group(0))
          for m in MACHINE_PATH.finditer(text)]


def tracked_files():
  try:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                         check=True, timeout=60).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout (or git is missing): nothing is tracked")
  return [p for p in out.decode().split("\0") if p]


def test_the_pattern_finds_machine_paths_and_nothing_else():
  home, work, tmp = "/" + "home/alice/", "/" + "work/sweeps/x", TMP
  found = lambda text: [path for _, path in machine_paths(text)]
  assert found(f"--workdir {work} --out={work}/report") == [work, f"{work}/report"]
  assert found(f"see `{home}src/x.py`, ({'/' + 'root/'}.cache)") == [
      f"{home}src/x.py", "/" + "root/.cache"]
  assert found(f"{tmp}pytest-of-bob/pytest-3/test0/a {tmp}tmpab12_x9z/b") == [
      f"{tmp}pytest-of-bob/pytest-3/test0/a", f"{tmp}tmpab12_x9z/b"]
  assert found("C:" + "\\Users\\carol\\runs") == ["C:" + "\\Users\\carol\\"]
  assert found("\n\n" + work)[0] == work and machine_paths("\n\n" + work)[0][0] == 3
  w, r, h = "/" + "work/", "/" + "root/", "/" + "home/"
  for fine in (f"https://example.com{w}x", f"gs://bucket{h}a/b", f"runs/x ../x ~{w}x",
               f"relative{r}x", "$HOME" + w[:-1],
               f"--workdir {tmp}run --config.data_dir=/data/tfds", "/content/runs",
               "experiments/bottleneck_activation"):
    assert found(fine) == [], fine


def test_no_tracked_file_names_a_machine_path():
  problems = []
  for path in tracked_files():
    full = os.path.join(ROOT, path)
    if not os.path.isfile(full):  # deleted in the working tree, or a submodule
      continue
    with open(full, "rb") as f:
      data = f.read()
    if b"\0" in data[:8192]:
      continue  # binary (the plots)
    text = data.decode("utf-8", errors="replace")
    problems += [f"{path}:{line}: {found}" for line, found in machine_paths(text)]
  assert not problems, (
      "absolute paths of a machine in committed files (cite runs/<name>, "
      "experiments/<name> or another path relative to the checkout):\n"
      + "\n".join(problems))
