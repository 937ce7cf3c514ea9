"""A prepared TFDS dataset's file formats: which it has, and adding one.

A set prepared as TFRecord (TFDS's default, how most people hold ImageNet)
cannot be read by index; `add_file_format` writes ArrayRecord next to it by
copying the serialized examples shard by shard (no decoding; TFDS's own
`tfds convert_format` does the same but needs Apache Beam).
"""

import tensorflow_datasets as tfds

ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD


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
