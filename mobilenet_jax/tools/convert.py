"""Keras Applications weights -> a checkpoint that `main` evaluates or fine-tunes.

  python -m mobilenet_jax.tools.convert \
      --from-keras mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5 \
      --config configs/mobilenet_v2.py:1.0_224 --out /tmp/keras_v2
  python -m mobilenet_jax.main --config configs/mobilenet_v2.py:1.0_224 \
      --workdir /tmp/keras_v2_eval --config.init_from=/tmp/keras_v2 --config.eval_only=True

The config names the architecture (model name, alpha, classes, top); a file
that does not fit it is refused with the mismatch named, and nothing is
written. The Keras model and the converted one are run on the same random
batch and their largest difference is printed and saved with the weights.
"""

from absl import flags
from ml_collections import config_flags

from mobilenet_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config whose model the weights are for.",
                                lock_config=True)
flags.DEFINE_string("from_keras", None, "Keras file: a .keras model, or .h5 / "
                    ".weights.h5 weights of a Keras Applications MobileNet(V2).")
flags.DEFINE_alias("from-keras", "from_keras")
flags.DEFINE_string("out", None, "New directory for the checkpoint.")
flags.mark_flags_as_required(["config", "from_keras", "out"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  from mobilenet_jax.interop.keras import convert_to_checkpoint
  diff = convert_to_checkpoint(FLAGS.from_keras, FLAGS.config, FLAGS.out)
  print(f"converted {FLAGS.from_keras} -> {FLAGS.out}: max |keras - ours| = {diff:.2e} "
        f"on a random batch. Start from it with --config.init_from={FLAGS.out}")


if __name__ == "__main__":
  cli.run(main)
