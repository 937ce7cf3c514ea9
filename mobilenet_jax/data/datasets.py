"""TFDS datasets, prepared in ArrayRecord: what the input pipeline reads by index.

`get_builder(config)` returns config.dataset's builder, prepared (generated,
or downloaded where there is network) in ArrayRecord. A dataset already
prepared in TFDS's default TFRecord format (how most people hold ImageNet)
cannot be read by index; it is refused with one line naming the command that
adds ArrayRecord next to it:

    python -m mobilenet_jax.tools.prepare_data --dataset=imagenet2012 --data_dir=DIR

which copies the serialized examples shard by shard (file_formats.py). Each
shard is written under a temporary name and renamed when complete, and the
format is recorded in dataset_info.json only when every shard is there, so an
interrupted conversion leaves the dataset as it was and can be rerun.
"""

import contextlib
import os
import tempfile

try:
  import fcntl
except ImportError:  # Windows: no lock; prepare datasets one run at a time
  fcntl = None

import tensorflow_datasets as tfds

from mobilenet_jax.data import imagenet_like  # noqa: F401  (registers imagenet_like)
from mobilenet_jax.data import preprocess
from mobilenet_jax.data.file_formats import (ARRAY_RECORD, add_file_format,
                                             has_array_record, sync_file_formats)
from mobilenet_jax.data import sklearn_digits  # noqa: F401  (registers sklearn_digits)
from mobilenet_jax.errors import ConfigError

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


def conversion_command(config) -> str:
  data_dir = f" --data_dir={config.data_dir}" if config.data_dir else ""
  return f"python -m mobilenet_jax.tools.prepare_data --dataset={config.dataset}{data_dir}"


def open_builder(config, file_format=None):
  """config.dataset's builder (file_format: for preparing it); ConfigError
  if TFDS does not know the name."""
  kwargs = {"file_format": file_format} if file_format else {}
  try:
    builder = tfds.builder(config.dataset, data_dir=config.data_dir, **kwargs)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(
        f"dataset={config.dataset!r} is not a TFDS dataset; use e.g. "
        "'sklearn_digits' (embedded, offline), 'cifar10', 'cifar100', "
        "'imagenette' or 'imagenet2012', or 'synthetic'.") from None
  return sync_file_formats(builder)


def prepare(config):
  """config.dataset prepared in ArrayRecord: generated or downloaded if it
  is not there, ArrayRecord added if it is there as TFRecord only."""
  builder = open_builder(config)
  if builder.is_prepared() and not has_array_record(builder):
    with prepare_lock(config.dataset):
      add_file_format(builder, ARRAY_RECORD)
  return get_builder(config)


def get_builder(config):
  """config.dataset's TFDS builder, prepared in ArrayRecord; ConfigError
  (naming the fix) if it is unknown, cannot be prepared here, or is stored
  as TFRecord only."""
  preprocess.single_threaded_ops()  # before TFDS runs any TensorFlow op
  builder = open_builder(config)
  if builder.is_prepared():
    if not has_array_record(builder):
      raise ConfigError(
          f"dataset={config.dataset!r} in data_dir={builder.data_dir} is stored as "
          f"{builder.info.file_format.value} only, which cannot be read by index; "
          f"add ArrayRecord next to it once with `{conversion_command(config)}` "
          "(about as much disk again; nothing is changed until it completes).")
    return builder
  builder = open_builder(config, ARRAY_RECORD)
  try:
    with prepare_lock(config.dataset):
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=config.manual_dir))
  except Exception as e:  # no network, no manual files: say how to get it
    raise ConfigError(
        f"dataset={config.dataset!r} is not prepared in data_dir="
        f"{config.data_dir or '~/tensorflow_datasets'} and cannot be fetched "
        f"here ({type(e).__name__}). Prepare it with `{conversion_command(config)}` "
        "where there is network (ImageNet: put the tar files in --manual_dir) "
        "and pass --config.data_dir; configs/default.py runs offline on the "
        "embedded digits.") from None
  return builder
