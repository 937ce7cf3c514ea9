"""Trains and evaluates a MobileNet.

  python -m mobilenet_jax.main --config configs/default.py --workdir /tmp/run
  python -m mobilenet_jax.main --config configs/mobilenet_v2.py:1.0_224 \
      --workdir gs://bucket/run --config.data_dir=/data/tfds
"""

from absl import flags, logging
from ml_collections import config_flags

from mobilenet_jax import cli, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


class QuietLibraries:
  """Drops the INFO chatter of orbax so the progress lines stay readable."""

  def filter(self, record) -> bool:
    return record.levelno > logging.INFO or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_logger().addFilter(QuietLibraries())
  logging.info("Config:\n%s", FLAGS.config)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (train.TrainingError, train.Preempted) as e:
    cli.fail(str(e))


if __name__ == "__main__":
  cli.run(main)
