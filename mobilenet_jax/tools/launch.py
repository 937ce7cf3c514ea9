"""Runs a multi-process job on this machine: N processes x D fake CPU devices.

For development and tests of multi-host code without a cluster. Each process
is `python -m mobilenet_jax.main` with its own --process_id, all joined over
localhost by JAX's distributed runtime, with gloo collectives between them:

  python -m mobilenet_jax.tools.launch --num_processes 2 --devices_per_process 2 -- \
      --config configs/default.py --workdir runs/two_hosts

Output lines are prefixed with the process index. If a process fails, the
others are given `--grace_s` to notice and stop by themselves (they do, via
JAX's heartbeats or the broken collectives), then terminated; the launcher
exits with the first failing process's status.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from typing import List, Sequence

from absl import app, flags

flags.DEFINE_integer("num_processes", 2, "Processes to start.")
flags.DEFINE_integer("devices_per_process", 2, "Fake CPU devices per process.")
flags.DEFINE_integer("port", 0, "Coordinator port on localhost (0: a free one).")
flags.DEFINE_float("grace_s", 60.0, "Seconds the surviving processes get to stop "
                   "by themselves after one fails.")
FLAGS = flags.FLAGS


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(devices: int) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  flags_ = [f for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags_ + [
      f"--xla_force_host_platform_device_count={devices}"])
  return env


def spawn(main_args: Sequence[str], num_processes: int, devices_per_process: int,
          port: int = 0, module: str = "mobilenet_jax.main", cwd=None,
          log_dir=None) -> List[subprocess.Popen]:
  """Starts the processes of one job. Their stdout+stderr go to pipes, or to
  log_dir/p{i}.log (a pipe nobody reads would block its process)."""
  address = f"localhost:{port or free_port()}"
  env = process_env(devices_per_process)
  procs = []
  for i in range(num_processes):
    out = (open(os.path.join(log_dir, f"p{i}.log"), "w") if log_dir
           else subprocess.PIPE)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", module, *main_args,
         f"--coordinator_address={address}", f"--num_processes={num_processes}",
         f"--process_id={i}"],
        env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True))
  return procs


def relay(proc: subprocess.Popen, index: int):
  for line in proc.stdout:
    sys.stdout.write(f"[p{index}] {line}")
    sys.stdout.flush()


def wait(procs: List[subprocess.Popen], grace_s: float) -> int:
  """Waits for all; once one fails, the rest get `grace_s`, then SIGTERM/SIGKILL."""
  failed_at = None
  while True:
    codes = [p.poll() for p in procs]
    if all(c is not None for c in codes):
      return next((c for c in codes if c), 0)
    if failed_at is None and any(c for c in codes if c is not None):
      failed_at = time.time()
    if failed_at is not None and time.time() - failed_at > grace_s:
      for p in procs:
        if p.poll() is None:
          print(f"launch: process {procs.index(p)} still running {grace_s:.0f} s "
                "after another failed; terminating it.", file=sys.stderr)
          p.kill()
    time.sleep(0.2)


def main(argv):
  procs = spawn(argv[1:], FLAGS.num_processes, FLAGS.devices_per_process, FLAGS.port)
  threads = [threading.Thread(target=relay, args=(p, i), daemon=True)
             for i, p in enumerate(procs)]
  for t in threads:
    t.start()
  code = wait(procs, FLAGS.grace_s)
  for t in threads:
    t.join(timeout=5)
  sys.exit(code)


if __name__ == "__main__":
  app.run(main)
