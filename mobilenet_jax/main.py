"""Trains and evaluates a MobileNet.

  python -m mobilenet_jax.main --config configs/default.py --workdir /tmp/run
  python -m mobilenet_jax.main --config configs/mobilenet_v2.py:1.0_224 \
      --workdir gs://bucket/run --config.data_dir=/data/tfds
"""

import logging as py_logging

from absl import flags, logging
from ml_collections import config_flags

from mobilenet_jax import cli, parallel, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_bool("distributed", False, "Join a multi-process job that JAX "
                  "detects (Cloud TPU, SLURM, Open MPI).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Processes in the job.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


class QuietLibraries:
  """Drops the INFO chatter of orbax so the progress lines stay readable."""

  def filter(self, record) -> bool:
    return record.levelno > py_logging.INFO or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_logger().addFilter(QuietLibraries())
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id, FLAGS.distributed)
  logging.info("Config:\n%s", FLAGS.config)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (train.TrainingError, train.Preempted) as e:
    cli.fail(str(e))


if __name__ == "__main__":
  cli.run(main)
