"""TFDS + tf.data input pipelines: per-host splits -> local numpy batches.

Training batches are a pure function of (seed, step, device): each device of
the mesh reads its own shard of the split, shuffled with a fixed seed, every
example's augmentation is seeded by its position in the stream, and a resumed
run skips the examples it already saw. So a resumed run sees exactly the
batches an uninterrupted one would, and 2 processes x 2 devices see the same
global batches as 1 process x 4 devices. Evaluation batches
are padded to full size and carry a `mask`, so every example counts once.
"""

import contextlib
import math
import os
import tempfile
from typing import Dict, Iterator, Sequence

try:
  import fcntl
except ImportError:  # Windows: no lock; prepare datasets one run at a time
  fcntl = None

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mobilenet_jax.data import imagenet_like  # noqa: F401  (registers imagenet_like)
from mobilenet_jax.data import sklearn_digits  # noqa: F401  (registers sklearn_digits)
from mobilenet_jax.defaults import EVAL_PREPROCESS, TRAIN_AUGMENT
from mobilenet_jax.errors import ConfigError, check_choice

CROP_FRACTION = 0.875  # evaluation central crop (Inception / TF-slim)
CACHE_LIMIT_BYTES = 2 << 30  # keep decoded datasets below this in memory


@contextlib.contextmanager
def prepare_lock(name: str):
  """One process at a time prepares a dataset on this machine (parallel runs
  of a sweep, or test workers, would otherwise race on TFDS's directories)."""
  safe = name.replace("/", "_")  # "imagenet_like/n2000": one file, not a folder
  path = os.path.join(tempfile.gettempdir(), f"mobilenet_jax_tfds_{safe}.lock")
  with open(path, "w") as f:
    if fcntl is not None:
      fcntl.flock(f, fcntl.LOCK_EX)
    yield


def check_preprocessing(config):
  """Raises ConfigError before tf.data traces the functions (where it would
  become a StagingError)."""
  check_choice("train_augment", config.train_augment, TRAIN_AUGMENT)
  check_choice("eval_preprocess", config.eval_preprocess, EVAL_PREPROCESS)


def get_builder(config):
  """The TFDS builder for config.dataset, prepared; ConfigError if it is not there."""
  check_preprocessing(config)
  try:
    builder = tfds.builder(config.dataset, data_dir=config.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(
        f"dataset={config.dataset!r} is not a TFDS dataset; use e.g. "
        "'sklearn_digits' (embedded, offline), 'cifar10', 'cifar100', "
        "'imagenette' or 'imagenet2012', or 'synthetic'.") from None
  try:
    with prepare_lock(config.dataset):
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=config.manual_dir))
  except Exception as e:  # no network, no manual files: say how to get it
    raise ConfigError(
        f"dataset={config.dataset!r} is not prepared in data_dir="
        f"{config.data_dir or '~/tensorflow_datasets'} and cannot be fetched "
        f"here ({type(e).__name__}). Prepare it with `tfds build "
        f"{config.dataset}` where there is network (ImageNet: put the tar files "
        "in --config.manual_dir) and pass --config.data_dir; configs/default.py "
        "runs offline on the embedded digits.") from None
  return builder


def num_examples(builder, split: str) -> int:
  """Examples in the whole split (all processes)."""
  info = builder.info.splits
  if split in info and info[split].num_examples:
    return info[split].num_examples
  # tfds.testing.mock_data and some hand-made builders record no sizes.
  return int(builder.as_dataset(split=split).reduce(0, lambda n, _: n + 1))


def normalize(image):
  """uint8 [0, 255] -> float32 [-1, 1], the MobileNet (Inception) convention."""
  return tf.cast(image, tf.float32) / 127.5 - 1.0


def to_rgb(image):
  return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image


def maybe_flip(image, seed, flip: bool):
  return tf.image.stateless_random_flip_left_right(image, seed + 1) if flip else image


def inception_crop(image, size: int, seed, flip: bool):
  """Random resized crop (8%..100% area, 3/4..4/3 aspect) + flip (Inception)."""
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed,
      area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
      min_object_covered=0.1, max_attempts=10, use_image_if_no_bounding_boxes=True)
  image = tf.slice(image, begin, crop)
  image = tf.image.resize(image, (size, size), antialias=True)
  return maybe_flip(image, seed, flip)


def small_image_crop(image, size: int, seed, flip: bool):
  """CIFAR recipe: resize, pad size/8 per side, random crop back, flip."""
  image = tf.image.resize(image, (size, size), antialias=True)
  pad = size // 8
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  image = tf.image.stateless_random_crop(image, (size, size, image.shape[-1]), seed)
  return maybe_flip(image, seed, flip)


def center_crop(image, size: int):
  """Central crop of 0.875 of the shorter side, then resize (evaluation)."""
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  crop = tf.cast(tf.cast(tf.minimum(h, w), tf.float32) * CROP_FRACTION, tf.int32)
  image = tf.image.crop_to_bounding_box(image, (h - crop) // 2, (w - crop) // 2, crop, crop)
  return tf.image.resize(image, (size, size), antialias=True)


def preprocess_train(example, seed, config):
  image = to_rgb(example["image"])
  if config.train_augment == "inception":
    image = inception_crop(image, config.image_size, seed, config.random_flip)
  elif config.train_augment == "small":
    image = small_image_crop(image, config.image_size, seed, config.random_flip)
  else:
    image = tf.image.resize(image, (config.image_size, config.image_size), antialias=True)
  image = tf.clip_by_value(image, 0, 255)
  return {"image": normalize(image), "label": example["label"]}


def preprocess_eval(example, config):
  image = to_rgb(example["image"])
  if config.eval_preprocess == "center_crop":
    image = center_crop(image, config.image_size)
  else:
    image = tf.image.resize(image, (config.image_size, config.image_size), antialias=True)
  image = tf.clip_by_value(image, 0, 255)
  return {"image": normalize(image), "label": example["label"],
          "mask": tf.constant(1.0)}


def read_split(builder, split: str):
  """`split` (or a slice of it), decoded, in a fixed order."""
  ds = builder.as_dataset(split=split, shuffle_files=False)
  if builder.info.dataset_size and builder.info.dataset_size < CACHE_LIMIT_BYTES:
    ds = ds.cache()
  return ds


def shard_stream(config, builder, shard: int, num_shards: int, batch: int,
                 start_step: int):
  """Endless batches of one device's shard of the training split.

  Each device of the mesh reads its own 1/num_shards of the split, shuffled
  and augmented with seeds of (seed, shard): the global batch is then the
  same however the devices are spread over processes.
  """
  part = tfds.even_splits(config.train_split, num_shards)[shard]
  ds = read_split(builder, part)
  ds = ds.shuffle(max(1, config.shuffle_buffer // num_shards),
                  seed=config.seed * 100_003 + shard,
                  reshuffle_each_iteration=True).repeat()
  ds = ds.enumerate().skip(start_step * batch)
  base = tf.constant([config.seed, shard], tf.int64)

  def augment(index, example):
    return preprocess_train(example, base + [0, 1_000_003 * index], config)

  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch, drop_remainder=True)


def train_batches(config, builder, shards: Sequence[int], num_shards: int,
                  batch_per_shard: int,
                  start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Endless local training batches from `start_step` on: the batches of this
  process's `shards` (its devices' positions in the mesh), concatenated."""
  streams = tuple(shard_stream(config, builder, s, num_shards, batch_per_shard,
                               start_step) for s in shards)
  ds = tf.data.Dataset.zip(streams).map(
      lambda *batches: {k: tf.concat([b[k] for b in batches], 0)
                        for k in batches[0]})
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def first_examples(config, builder, split: str, limit: int):
  """(images, labels) of the first `limit` examples of `split`, preprocessed
  for evaluation, as numpy: calibration and checks of exported models."""
  ds = read_split(builder, split).take(limit).map(lambda ex: preprocess_eval(ex, config))
  batch = next(ds.batch(limit).as_numpy_iterator())
  return batch["image"], batch["label"]


def eval_steps(builder, split: str, global_batch: int) -> int:
  return math.ceil(num_examples(builder, split) / global_batch)


def eval_batches(config, builder, local_batch: int, steps: int):
  """Exactly `steps` local batches; padding examples have mask 0."""
  # Each process reads its own part; padding evens out the parts.
  ds = read_split(builder, tfds.split_for_jax_process(config.eval_split))
  ds = ds.map(lambda ex: preprocess_eval(ex, config),
              num_parallel_calls=tf.data.AUTOTUNE)
  zeros = {k: tf.zeros(s.shape, s.dtype) for k, s in ds.element_spec.items()}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(zeros).repeat())
  ds = ds.take(steps * local_batch).batch(local_batch).prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator()
