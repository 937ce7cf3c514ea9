"""The input pipeline alone: images/s and time to the first batch.

  python -m mobilenet_jax.tools.input_benchmark --num_train=2000 --workers=0,1,2

On the generated ImageNet-like set (mobilenet_jax/data/imagenet_like.py:
~400x350 px JPEGs of ~110 KB) at --image_size with the Inception crop, in
one invocation:

* images/s of the Grain pipeline per worker count, decoding only the crop
  window and (for the gain) decoding whole images, and of the tf.data
  pipeline it replaced (mobilenet_jax/peers/tf_data_pipeline.py), as it was
  (antialiased resize) and with the bilinear resize used now;
* the time to the first batch at step 0 and when resuming --resume_epochs
  epochs in, for both.

Nothing trains; batches go nowhere. The set is generated into --data_dir once
(~30 images/s) in both file formats and read from the page cache after a
first pass.
"""

import json
import os
import time

from absl import flags

from mobilenet_jax import cli

flags.DEFINE_integer("num_train", 2000, "Images in the generated training set.")
flags.DEFINE_string("data_dir", os.path.join("~", "tensorflow_datasets", "input_benchmark"),
                    "TFDS data_dir where the generated set is (or is prepared once).")
flags.DEFINE_integer("image_size", 224, "Output resolution.")
flags.DEFINE_integer("batch_size", 64, "Images per batch.")
flags.DEFINE_integer("batches", 20, "Batches timed per row, after the first.")
flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts to measure.")
flags.DEFINE_integer("resume_epochs", 10, "Where the resumed stream starts.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
FLAGS = flags.FLAGS


def dataset(num_train: int, data_dir: str):
  """The generated set, in ArrayRecord (Grain) and TFRecord (tf.data)."""
  from mobilenet_jax import defaults
  from mobilenet_jax.data import datasets, imagenet_like
  # TFRecord first: tf.data's as_dataset reads only a set's first format.
  imagenet_like.prepare(num_train, data_dir=data_dir, file_format="tfrecord")
  b = imagenet_like.prepare(num_train, data_dir=data_dir, file_format="array_record")
  config = defaults.get_config()
  config.update(dataset=f"imagenet_like/{imagenet_like.config_name(num_train)}",
                data_dir=data_dir, image_size=FLAGS.image_size,
                train_augment="inception", random_flip=True)
  for path in b.data_path.iterdir():  # into the page cache
    path.read_bytes()
  return config, datasets.get_builder(config)


def first_batch_s(make) -> float:
  """Seconds from nothing to the first batch of the stream `make()` builds."""
  start = time.perf_counter()
  next(make())
  return time.perf_counter() - start


def images_per_s(stream) -> float:
  next(stream)  # start-up and compilation are the first batch's
  start = time.perf_counter()
  for _ in range(FLAGS.batches):
    next(stream)
  return FLAGS.batches * FLAGS.batch_size / (time.perf_counter() - start)


def measure(config, builder) -> dict:
  import tensorflow_datasets as tfds
  from mobilenet_jax.data import input_pipeline, preprocess
  from mobilenet_jax.peers import tf_data_pipeline
  batch = FLAGS.batch_size
  resume_step = FLAGS.resume_epochs * FLAGS.num_train // batch

  def grain_stream(workers, first_step=0, decode_window=True):
    fn = preprocess.Preprocess("inception", config.image_size, flip=True,
                               decode_window=decode_window)
    return input_pipeline.train_batches(config, builder, [0], 1, batch, first_step,
                                        workers=workers, preprocess_fn=fn)

  tf_builder = tfds.builder(config.dataset, data_dir=config.data_dir)  # reads TFRecord
  tf_data = lambda first_step=0, antialias=True: tf_data_pipeline.train_batches(
      config, tf_builder, batch, first_step, antialias=antialias)
  rows = []
  for workers in map(int, FLAGS.workers):
    for window in (True, False):
      rows.append({"pipeline": "grain", "workers": workers, "decode": (
          "crop window" if window else "whole image"),
                   "images_per_s": images_per_s(grain_stream(workers, 0, window))})
  rows.append({"pipeline": "tf.data, bilinear", "workers": "-", "decode": "whole image",
               "images_per_s": images_per_s(tf_data(antialias=False))})
  rows.append({"pipeline": "tf.data (before)", "workers": "-", "decode": "whole image",
               "images_per_s": images_per_s(tf_data())})
  first = []
  for workers in sorted({0, max(map(int, FLAGS.workers))}):
    first.append({"pipeline": "grain", "workers": workers,
                  "fresh_s": first_batch_s(lambda: grain_stream(workers)),
                  "resumed_s": first_batch_s(lambda: grain_stream(workers, resume_step))})
  first.append({"pipeline": "tf.data (before)", "workers": "-",
                "fresh_s": first_batch_s(tf_data),
                "resumed_s": first_batch_s(lambda: tf_data(resume_step))})
  return {"dataset": config.dataset, "image_size": config.image_size,
          "batch_size": batch, "cpus": os.cpu_count(), "resume_step": resume_step,
          "throughput": rows, "first_batch": first}


def print_table(result: dict):
  print(f"{result['dataset']}, {result['image_size']} px Inception crop, batches of "
        f"{result['batch_size']}, {result['cpus']} CPUs")
  base = result["throughput"][-1]["images_per_s"]
  print(f"{'pipeline':18} {'workers':>7}  {'decode':12} {'images/s':>9} {'vs before':>10}")
  for r in result["throughput"]:
    print(f"{r['pipeline']:18} {r['workers']:>7}  {r['decode']:12} "
          f"{r['images_per_s']:9.0f} {r['images_per_s'] / base:9.2f}x")
  print(f"\ntime to the first batch (s): at step 0, and resumed at step "
        f"{result['resume_step']} ({FLAGS.resume_epochs} epochs in)")
  print(f"{'pipeline':18} {'workers':>7} {'step 0':>8} {'resumed':>8} {'ratio':>6}")
  for r in result["first_batch"]:
    print(f"{r['pipeline']:18} {r['workers']:>7} {r['fresh_s']:8.2f} "
          f"{r['resumed_s']:8.2f} {r['resumed_s'] / r['fresh_s']:6.2f}")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  config, builder = dataset(FLAGS.num_train, os.path.expanduser(FLAGS.data_dir))
  result = measure(config, builder)
  if FLAGS.json:
    print(json.dumps(result))
  else:
    print_table(result)


if __name__ == "__main__":
  cli.run(main)
