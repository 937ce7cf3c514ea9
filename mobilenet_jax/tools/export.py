"""A run's (or convert's) checkpoint -> TFLite or SavedModel, checked.

  python -m mobilenet_jax.tools.export --workdir /tmp/run --format tflite
  python -m mobilenet_jax.tools.export --workdir /tmp/run --format tflite --quantize int8
  python -m mobilenet_jax.tools.export --workdir /tmp/run --format saved_model

How the export is made, checked and timed: mobilenet_jax/interop/tf_export.py.
"""

from absl import flags
from ml_collections import config_flags

from mobilenet_jax import cli
from mobilenet_jax.interop import tf_export

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a run or of convert.")
flags.DEFINE_enum("format", "tflite", list(tf_export.FORMATS), "What to write.")
flags.DEFINE_enum("quantize", "none", ["none", "int8"], "int8: post-training "
                  "quantisation (tflite only).")
flags.DEFINE_string("out", None, "Output file (tflite) or directory (saved_model); "
                    "default: <workdir>/export/model[_int8].tflite or saved_model.")
config_flags.DEFINE_config_file("config", None, "Config for the data (calibration and "
                                "checks); default: the run's own config.")
flags.DEFINE_integer("calibration_examples", 200, "Training images that calibrate int8.")
flags.DEFINE_integer("check_examples", 1000, "Evaluation images the export is checked on.")
flags.DEFINE_bool("compare_keras", True, "Also convert and time a Keras Applications "
                  "model of the same architecture (tflite).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  report = tf_export.export(FLAGS.workdir, FLAGS.format, FLAGS.quantize, FLAGS.out,
                            FLAGS.config, FLAGS.calibration_examples,
                            FLAGS.check_examples, FLAGS.compare_keras)
  print(tf_export.summary(report))


def run():
  """The `mobilenet-export` console script."""
  cli.run(main)


if __name__ == "__main__":
  cli.run(main)
