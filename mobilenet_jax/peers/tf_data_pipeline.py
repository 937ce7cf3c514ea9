"""The tf.data training input this project used before Grain (commit 2f3e0c3),
kept as the baseline that `python -m mobilenet_jax.tools.input_benchmark` measures
the Grain pipeline against, in the same invocation.

Each device reads its own 1/num_shards of the split through a shuffle
buffer; resuming at step s skips s x batch examples of its stream (tf.data
still reads and shuffles them), so the time to the first batch grows with
the step. Reads a dataset prepared as TFRecord (builder.as_dataset), and
decodes every epoch (at ImageNet scale nothing fits in memory; the old code
cached decoded sets under 2 GiB).
"""

import tensorflow as tf
import tensorflow_datasets as tfds

from mobilenet_jax.data import preprocess


def inception_crop(image, size: int, seed, flip: bool, antialias: bool):
  """The random resized crop + flip of a decoded image; the resize was
  antialiased before this project followed TF-slim's bilinear one."""
  window = preprocess.inception_window(tf.shape(image), seed)
  image = tf.image.crop_to_bounding_box(image, *tf.unstack(window))
  image = tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=antialias)
  return preprocess.maybe_flip(image, seed, flip)


def shard_stream(config, builder, shard: int, num_shards: int, batch: int,
                 start_step: int, shuffle_buffer: int, antialias: bool):
  """Endless batches of one device's shard of the training split."""
  part = tfds.even_splits(config.train_split, num_shards)[shard]
  # Decoded each epoch, as ImageNet is: TFDS caches sets under 250 MiB in
  # memory by itself, and the old pipeline cached those under 2 GiB.
  ds = builder.as_dataset(split=part, shuffle_files=False,
                          read_config=tfds.ReadConfig(try_autocache=False))
  ds = ds.shuffle(max(1, shuffle_buffer // num_shards),
                  seed=config.seed * 100_003 + shard,
                  reshuffle_each_iteration=True).repeat()
  ds = ds.enumerate().skip(start_step * batch)
  base = tf.constant([config.seed, shard], tf.int64)

  def augment(index, example):
    image = inception_crop(preprocess.to_rgb(example["image"]), config.image_size,
                           base + [0, 1_000_003 * index], config.random_flip, antialias)
    return {"image": preprocess.normalize(image), "label": example["label"]}

  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch, drop_remainder=True)


def train_batches(config, builder, batch: int, start_step: int = 0,
                  shuffle_buffer: int = 10_000, antialias: bool = True):
  """One device's endless numpy batches from `start_step` on (Inception crop)."""
  ds = shard_stream(config, builder, 0, 1, batch, start_step, shuffle_buffer, antialias)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
