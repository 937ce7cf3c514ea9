"""The huge-page relaunch: the environment it builds, and the relaunch itself."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from mobilenet_jax import hugepages


def test_environment_adds_the_tunable_once_and_keeps_others():
  env = hugepages.environment(on=True, environ={"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + hugepages.TUNABLE
  assert hugepages.environment(on=True, environ=env) == env
  assert hugepages.active(env)
  off = hugepages.environment(on=False, environ=env)
  assert off["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2" and not hugepages.active(off)


def test_not_wanted_when_already_on_or_opted_out():
  assert not hugepages.wanted(hugepages.environment(on=True, environ={}))
  assert not hugepages.wanted({"MOBILENET_JAX_HUGEPAGES": "0"})


@pytest.mark.skipif(not hugepages.wanted({}), reason="needs glibc >= 2.35 and THP 'madvise'")
@pytest.mark.slow
def test_entry_point_relaunches_itself_with_huge_pages():
  """`python -m mobilenet_jax.tools.benchmark` re-executes with the tunable (same
  arguments, so its JSON comes back); with the opt-out it runs as started."""
  args = [sys.executable, "-m", "mobilenet_jax.tools.benchmark", "--json", "--mode=infer",
          "--model=mobilenet_v1", "--alpha=0.25", "--image_size=32", "--batch_size=4",
          "--steps=1", "--warmup=0"]

  def run(**env):
    environ = hugepages.environment(on=False, environ=dict(os.environ, **env))
    proc = subprocess.run(args, cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

  result = run()
  assert result["hugepages"] and result["batch_size"] == 4 and result["alpha"] == 0.25
  assert not run(MOBILENET_JAX_HUGEPAGES="0")["hugepages"]
