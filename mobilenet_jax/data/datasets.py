"""TFDS datasets, prepared in ArrayRecord: what the input pipeline reads by index.

`get_builder(config)` returns config.dataset's builder, prepared (generated,
or downloaded where there is network) in ArrayRecord. A dataset already
prepared in TFDS's default TFRecord format (how most people hold ImageNet)
cannot be read by index; it is refused with one line naming the command that
adds ArrayRecord next to it:

    python -m mobilenet_jax.prepare_data --dataset=imagenet2012 --data_dir=DIR

which copies the serialized examples shard by shard (no decoding; TFDS's own
`tfds convert_format` does the same but needs Apache Beam). Each shard is
written under a temporary name and renamed when complete, and the format is
recorded in dataset_info.json only when every shard is there, so an
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
from mobilenet_jax.data import sklearn_digits  # noqa: F401  (registers sklearn_digits)
from mobilenet_jax.errors import ConfigError

ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD


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


def sync_file_formats(builder):
  """TFDS restores dataset_info.json's alternative file formats into the
  info proto but not into the list that as_data_source consults: sync it,
  so a set with an added format (add_file_format) is read in either."""
  formats = builder.info.alternative_file_formats
  for f in list(builder.info.as_proto.alternative_file_formats):
    f = tfds.core.FileFormat.from_value(f)
    if f not in formats:
      formats.append(f)
  return builder


def has_array_record(builder) -> bool:
  return ARRAY_RECORD in builder.info.available_file_formats()


def conversion_command(config) -> str:
  data_dir = f" --data_dir={config.data_dir}" if config.data_dir else ""
  return f"python -m mobilenet_jax.prepare_data --dataset={config.dataset}{data_dir}"


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


def _records(path, file_format):
  """The serialized examples of one shard, in order."""
  if file_format == ARRAY_RECORD:
    from array_record.python import array_record_module
    reader = array_record_module.ArrayRecordReader(str(path))
    try:
      yield from reader.read_all()
    finally:
      reader.close()
  else:
    import tensorflow as tf
    for record in tf.data.TFRecordDataset(str(path)):
      yield record.numpy()


def add_file_format(builder, file_format=ARRAY_RECORD):
  """Writes the prepared set of `builder` in one more file format, next to
  the one it was prepared in, by copying the serialized examples shard by
  shard, and records it in dataset_info.json once all shards are written."""
  from tensorflow_datasets.core import file_adapters
  fmt = tfds.core.FileFormat.from_value(file_format)
  sync_file_formats(builder)
  if fmt in builder.info.available_file_formats():
    return
  src_fmt = builder.info.file_format
  writer = file_adapters.ADAPTER_FOR_FORMAT[fmt]
  for split in builder.info.splits.values():
    template = split.filename_template
    srcs = sorted(template.sharded_filepaths(split.num_shards))
    dsts = sorted(template.replace(filetype_suffix=fmt.file_suffix)
                  .sharded_filepaths(split.num_shards))
    for src, dst in zip(srcs, dsts):
      if dst.exists():  # written by an earlier, interrupted conversion
        continue
      tmp = dst.parent / f"incomplete.{dst.name}"
      writer.write_examples(tmp, enumerate(_records(src, src_fmt)))
      tmp.rename(dst)
  builder.info.add_alternative_file_format(fmt)
  builder.info.write_to_directory(builder.data_dir)
