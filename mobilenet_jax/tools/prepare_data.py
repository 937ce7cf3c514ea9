"""Prepares a TFDS dataset in ArrayRecord, the format the input pipeline reads.

  # generate / download and prepare (ImageNet: the tar files in --manual_dir)
  python -m mobilenet_jax.tools.prepare_data --dataset=imagenet2012 \
      --data_dir=~/tensorflow_datasets --manual_dir=~/imagenet_tars
  # a dataset already prepared as TFRecord: ArrayRecord is added next to it
  python -m mobilenet_jax.tools.prepare_data --dataset=imagenet2012 --data_dir=DIR

Prints where the dataset is and the example count of each split.
"""

from absl import flags

from mobilenet_jax import cli

flags.DEFINE_string("dataset", None, "TFDS name, e.g. imagenet2012, cifar10, "
                    "imagenet_like/n2000.")
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default ~/tensorflow_datasets).")
flags.DEFINE_string("manual_dir", None, "Where downloads that need a login lie "
                    "(ImageNet's tar files).")
flags.mark_flag_as_required("dataset")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  import ml_collections
  from mobilenet_jax.data import datasets
  config = ml_collections.ConfigDict(dict(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir))
  builder = datasets.prepare(config)
  splits = ", ".join(f"{name} {split.num_examples}"
                     for name, split in builder.info.splits.items())
  print(f"{config.dataset} in ArrayRecord at {builder.data_dir}: {splits}")


if __name__ == "__main__":
  cli.run(main)
