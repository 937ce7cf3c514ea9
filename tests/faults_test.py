"""What a rerun of the same command promises when things go wrong, through
the real command lines: a workdir that is a file or cannot be written, a
second run on a live workdir, a damaged latest checkpoint, a disk that fills
during a save. Each gives one line and an exit status, and everything saved
before is left byte for byte; after a damaged checkpoint and a full disk the
rerun ends as an uninterrupted run does."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from mobilenet_jax.training import checkpoint
from multihost_test import run_job, states_close, two_processes  # noqa: F401 (a fixture)
from train_test import RESUME, assert_same_run, checkpoint_files, kill_after_checkpoint, main

# Every run here keeps all its checkpoints, so "nothing saved is lost" is
# checked file by file, not blurred by the rotation of old steps.
RUN = RESUME + ["--config.keep_checkpoints=5"]


def one_line(err: str) -> str:
  """The output's one error line; no traceback anywhere."""
  lines = [l for l in err.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
  return lines[0]


def test_the_error_line_stands_on_its_own_after_a_library_s_partial_line():
  """In a job of two processes, Gloo's log line, written in pieces from its own
  thread, once wrapped around the error line; the error starts a line of its own."""
  code = ("import sys; from mobilenet_jax import cli; "
          "sys.stderr.write('[Gloo] Rank 0 is connected to '); sys.stderr.flush(); "
          "cli.fail('--workdir is in use by another run.')")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=ROOT, timeout=120)
  assert proc.returncode == 2
  assert one_line(proc.stderr) == "error: --workdir is in use by another run."


def wait_for(path, proc=None, timeout=300):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    assert time.time() < deadline, f"{path} never appeared"
    assert proc is None or proc.poll() is None, "the run ended before the fault"
    time.sleep(0.05)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, small_config_file):
  """An uninterrupted run: what every rerun below must end as."""
  workdir = tmp_path_factory.mktemp("straight")
  code, err = main(workdir, small_config_file, *RUN)
  assert code == 0, err[-3000:]
  return workdir


# ------------------------------------------------------------------ paths ---

@contextlib.contextmanager
def tmpfs(path, size: str, *options: str):
  """A tmpfs mounted at `path` (root only: the test is skipped elsewhere)."""
  path.mkdir()
  mount = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}",) + options),
                          "tmpfs", str(path)], capture_output=True, text=True)
  if mount.returncode:
    pytest.skip(f"cannot mount a tmpfs here (not root?): {mount.stderr.strip()}")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.slow
def test_a_workdir_that_cannot_be_used_is_one_line_before_anything_runs(
    tmp_path, small_config_file):
  (tmp_path / "file").write_text("not a directory")
  cases = [(tmp_path / "file", "is a file, not a directory"),
           (tmp_path / "file" / "run", f"{tmp_path / 'file'} is a file"),
           ("/proc/no_such_dir/run", "cannot create --workdir /proc/no_such_dir/run")]
  with contextlib.ExitStack() as stack:
    if os.geteuid() == 0:  # root writes through permissions: a read-only mount
      read_only = stack.enter_context(tmpfs(tmp_path / "ro", "1m", "ro"))
    else:
      read_only = tmp_path / "ro"
      read_only.mkdir(mode=0o555)
    cases += [(read_only, "is not writable"),
              (read_only / "run", f"cannot create --workdir {read_only / 'run'}")]
    for workdir, words in cases:
      code, err = main(workdir, small_config_file, "--config.num_train_steps=2")
      line = one_line(err)
      assert code == 2 and str(workdir) in line and words in line, line
      assert "choose another --workdir" in line or "choose a --workdir" in line, line
      assert "Compiling" not in err and "step 1" not in err
  assert (tmp_path / "file").read_text() == "not a directory"


@pytest.mark.slow
def test_a_config_file_that_is_missing_or_has_no_get_config_is_one_line(tmp_path):
  (tmp_path / "empty.py").write_text("x = 1\n")
  for config, words in [(tmp_path / "missing.py", "does not exist"),
                        (tmp_path / "empty.py", "does not define get_config()")]:
    code, err = main(tmp_path / "run", str(config))
    line = one_line(err)
    assert code == 2 and str(config) in line and words in line, line
    assert "configs/default.py" in line  # the fix: what a config file looks like
  assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- lock ---

@pytest.mark.slow
def test_a_second_run_is_refused_while_the_first_lives_and_resumes_once_it_is_killed(
    tmp_path, small_config_file, straight):
  workdir = tmp_path / "run"
  first = main(workdir, small_config_file, *RUN, wait=False)
  try:
    wait_for(workdir / "checkpoints" / "4", first)
    first.send_signal(signal.SIGSTOP)  # alive and holding the lock, writing nothing
    before = checkpoint_files(workdir)
    code, err = main(workdir, small_config_file, *RUN)
    line = one_line(err)
    assert code == 2 and f"--workdir {workdir} is in use by another run" in line, line
    assert f"pid {first.pid} on host {socket.gethostname()}, started " in line, line
    assert checkpoint_files(workdir) == before
  finally:
    first.send_signal(signal.SIGKILL)  # however it dies, the lock goes with it
    first.communicate(timeout=60)
  assert not (workdir / "results.json").exists()
  code, err = main(workdir, small_config_file, *RUN)
  assert code == 0 and "Resumed from step" in err, err[-3000:]
  assert_same_run(straight, workdir)


@pytest.mark.slow
def test_a_second_sweep_on_a_live_sweep_directory_is_refused(tmp_path):
  from ablate_test import tiny_sweep_command
  args, env, workdir = tiny_sweep_command(tmp_path)
  first = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  try:
    wait_for(workdir / "relu6" / "seed_0" / "checkpoints" / "2", first)
    first.send_signal(signal.SIGSTOP)
    sweep_json = (workdir / "sweep.json").read_bytes()
    before = checkpoint_files(workdir)
    second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    line = one_line(second.stderr)
    assert second.returncode == 2, line
    assert f"--workdir {workdir} is in use by another run (pid {first.pid}" in line, line
    assert (workdir / "sweep.json").read_bytes() == sweep_json
    assert checkpoint_files(workdir) == before
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)


@pytest.mark.slow
def test_every_process_of_a_second_job_is_refused_on_a_live_workdir(
    tmp_path, small_config_file):
  """Multi-process (launch): process 0 holds the lock for its job; every
  process of a second job hears that it is taken and stops with the line."""
  workdir = tmp_path / "job"
  first, _ = run_job(workdir, small_config_file, wait=False)
  try:
    wait_for(workdir / "checkpoints" / "2", first[0])
    for p in first:
      p.send_signal(signal.SIGSTOP)
    before = checkpoint_files(workdir)
    codes, outputs = run_job(workdir, small_config_file)
    assert codes == [2, 2], "\n".join(o[-3000:] for o in outputs)
    for out in outputs:
      line = one_line(out)
      assert f"is in use by another run (pid {first[0].pid} on host" in line, line
    assert checkpoint_files(workdir) == before
  finally:
    for p in first:
      p.send_signal(signal.SIGKILL)
      p.wait(timeout=60)


# ---------------------------------------------------- damaged checkpoint ---

def damage(step_dir, seed=0):
  """Overwrites the array data of a checkpoint's state/, sizes kept."""
  rng = np.random.default_rng(seed)
  files = sorted((step_dir / "state").glob("ocdbt.process_*/d/*"))
  assert files
  for f in files:
    f.write_bytes(rng.bytes(f.stat().st_size))


def renamed(files: dict, old: str, new: str) -> dict:
  return {path.replace(old, new): data for path, data in files.items()}


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
    tmp_path, small_config_file, straight):
  workdir = tmp_path / "run"
  kill_after_checkpoint(workdir, small_config_file, RUN, step=8)
  ckpts = workdir / "checkpoints"
  intact_4 = {p: d for p, d in checkpoint_files(workdir).items() if "/checkpoints/4/" in p}
  damage(ckpts / "8")
  damage(ckpts / "4", seed=1)

  # Nothing restores: one line listing what was tried, nothing moved.
  before = checkpoint_files(workdir)
  code, err = main(workdir, small_config_file, *RUN)
  line = one_line(err)
  assert code == 2 and f"no checkpoint in {ckpts} can be read: step 8 (state: " in line, line
  assert "; step 4 (state: " in line and "Nothing was changed" in line, line
  assert checkpoint_files(workdir) == before

  # Step 4 readable again: step 8 is kept aside and the run resumes from 4.
  for path, data in intact_4.items():
    open(path, "wb").write(data)
  before = checkpoint_files(workdir)
  code, err = main(workdir, small_config_file, *RUN)
  assert code == 0 and "Traceback" not in err, err[-3000:]
  warnings = [l for l in err.splitlines() if "cannot be read" in l]
  assert len(warnings) == 1, err[-3000:]
  assert ("checkpoint step 8 cannot be read (state: ValueError: " in warnings[0]
          and f"kept as {ckpts / '8.damaged'}, resuming from step 4." in warnings[0])
  after = checkpoint_files(workdir)
  assert renamed({p: d for p, d in before.items() if "/checkpoints/8/" in p},
                 "/checkpoints/8/", "/checkpoints/8.damaged/").items() <= after.items()
  assert intact_4.items() <= after.items()
  assert_same_run(straight, workdir)


@pytest.mark.slow
def test_a_job_of_two_processes_resumes_past_a_damaged_checkpoint(
    tmp_path, small_config_file, two_processes):
  """Multi-process (launch): the processes agree on the step they resume
  from, process 0 sets the damaged one aside, and the job ends as one that
  was never interrupted (multihost_test's)."""
  workdir = tmp_path / "job"
  procs, _ = run_job(workdir, small_config_file, wait=False)
  wait_for(workdir / "checkpoints" / "4", procs[0])
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
  latest = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  damage(workdir / "checkpoints" / str(latest))
  codes, outputs = run_job(workdir, small_config_file)
  assert codes == [0, 0], "\n".join(o[-3000:] for o in outputs)
  for out in outputs:
    assert f"checkpoint step {latest} cannot be read (state: " in out, out[-3000:]
    assert f"resuming from step {latest - 2}." in out and "Traceback" not in out
  assert (workdir / "checkpoints" / f"{latest}.damaged").is_dir()
  states_close(checkpoint.restore_on_one_device(str(workdir))[0],
               checkpoint.restore_on_one_device(str(two_processes))[0], atol=0)
  assert (json.loads((workdir / "results.json").read_text())["history"]
          == json.loads((two_processes / "results.json").read_text())["history"])


ABANDONED_READ = """
import asyncio, gc, sys, time, weakref
import jax, numpy as np, tensorstore as ts
from orbax.checkpoint._src.serialization import limits, serialization
from mobilenet_jax.training import checkpoint
if sys.argv[1] == "quiet":
  checkpoint.quiet_orbax_leftovers()
t = ts.open({"driver": "zarr", "kvstore": "memory://"}, create=True,
            dtype=ts.float32, shape=[4]).result()
loop = asyncio.new_event_loop()
# orbax's own read of one array, stopped while it waits for TensorStore: what a
# restore leaves of its other reads when the first one finds damage
read = loop.create_task(serialization._read_array_index_and_device_put(
    jax.devices()[:1], (slice(0, 4, 1),), t, global_shape=(4,), new_shard_shape=(4,),
    dtype=np.float32, byte_limiter=limits.get_byte_limiter(), strict=True, dll=None,
    memory_kind=None))
loop.run_until_complete(asyncio.sleep(0))
assert not read.done()
loop.close()
# What restore leaves: only TensorStore's pending callback holds the read. Once it
# has fired (into the closed loop), the read is collected and closed, as at exit.
collected = weakref.ref(read)
del read
deadline = time.time() + 60
while collected() is not None and time.time() < deadline:
  gc.collect()
  time.sleep(0.05)
assert collected() is None, "the read was never collected"
class Other:
  def __del__(self):
    raise ValueError("an unrelated error in a destructor")
Other()
"""


def test_reads_a_failed_restore_abandons_print_nothing_and_other_errors_still_do():
  """Orbax's other reads, stopped when one read finds damage, are closed at
  exit and print tracebacks (the two-process test above saw them now and
  then); quiet_orbax_leftovers drops exactly those."""
  def run(mode):
    return subprocess.run([sys.executable, "-c", ABANDONED_READ, mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  loud, quiet = run("loud"), run("quiet")
  assert loud.returncode == 0 and quiet.returncode == 0, quiet.stderr[-3000:]
  for leftover in ("Encountered error while reading array index",
                   "Task was destroyed but it is pending"):
    assert leftover in loud.stderr, loud.stderr[-3000:]  # the scenario is real
    assert leftover not in quiet.stderr, quiet.stderr[-3000:]
  assert "an unrelated error in a destructor" in quiet.stderr, quiet.stderr[-3000:]


# -------------------------------------------------------------- full disk ---

def used_bytes(path) -> int:
  s = os.statvfs(path)
  return (s.f_blocks - s.f_bfree) * s.f_frsize


@pytest.mark.slow
def test_a_disk_that_fills_during_a_save_is_one_line_and_the_rerun_continues_exactly(
    tmp_path, small_config_file, straight):
  """A real full disk: the workdir on a tmpfs, shrunk after step 4 to what
  it holds plus 256 KiB, less than a checkpoint (about 900 KiB) needs."""
  with tmpfs(tmp_path / "disk", "64m") as disk:
    workdir = disk / "run"
    kill_after_checkpoint(workdir, small_config_file, RUN, step=4)
    before = checkpoint_files(workdir)
    subprocess.run(["mount", "-o", f"remount,size={used_bytes(disk) + (256 << 10)}",
                    str(disk)], check=True)
    code, err = main(workdir, small_config_file, *RUN)
    line = one_line(err)
    assert code == 1, line
    assert (f"cannot save checkpoint step 8: {workdir}/checkpoints/" in line
            and ": No space left on device. Step 4, the last complete checkpoint, is "
                "intact" in line), line
    assert checkpoint_files(workdir) == before
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]  # nothing half-written

    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    code, err = main(workdir, small_config_file, *RUN)
    assert code == 0 and "Resumed from step 4" in err, err[-3000:]
    assert_same_run(straight, workdir)
