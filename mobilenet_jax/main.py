"""Trains and evaluates a MobileNet.

  python -m mobilenet_jax.main --config configs/default.py --workdir /tmp/run
  python -m mobilenet_jax.main --config configs/mobilenet_v2.py:1.0_224 \
      --workdir gs://bucket/run --config.data_dir=/data/tfds
"""

if __name__ == "__main__":  # before the imports below allocate anything
  from mobilenet_jax import hugepages
  hugepages.relaunch()

import os
import sys

import jax

from absl import flags, logging
from ml_collections import config_flags

from mobilenet_jax import cli, defaults, parallel
from mobilenet_jax.training import workdir

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_bool("distributed", False, "Join a multi-process job that JAX "
                  "detects (Cloud TPU, SLURM, Open MPI).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Processes in the job.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_integer("distributed_timeout_s", 300, "Seconds to wait for all "
                     "processes of a multi-process job to join.")
flags.DEFINE_integer("heartbeat_timeout_s", 100, "Seconds without a heartbeat "
                     "after which JAX declares a process dead and stops the others.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id, FLAGS.distributed,
                                  FLAGS.distributed_timeout_s,
                                  FLAGS.heartbeat_timeout_s)
  defaults.validate(FLAGS.config)  # one line for a bad value, before anything runs
  workdir.check(FLAGS.workdir)  # and for a bad path, before TensorFlow is imported
  logging.info("Config:\n%s", FLAGS.config)
  from mobilenet_jax.training import loop  # TensorFlow (clu, TFDS) only past the checks
  try:
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (loop.TrainingError, loop.Preempted) as e:
    cli.fail(str(e))
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    lost_peer(e)


def lost_peer(error: Exception):
  """Another process died mid-collective: say so and exit at once. A normal
  exit would wait in JAX's shutdown barrier for the dead process, then abort."""
  cli.error_line(f"process {jax.process_index()} of {jax.process_count()} lost "
                 f"contact with the job ({str(error).splitlines()[0]}). The checkpoints "
                 f"in {FLAGS.workdir} are intact: restart all processes with the same "
                 "command to resume from the last one.")
  sys.stdout.flush()
  os._exit(3)


def run():
  """The `mobilenet-train` console script; `python -m mobilenet_jax.main` relaunches
  for huge pages before its imports, this after them (the same process)."""
  from mobilenet_jax import hugepages
  hugepages.relaunch()
  cli.run(main)


if __name__ == "__main__":
  cli.run(main)
