"""The offline ImageNet-like TFDS builder: image statistics, determinism, and
the tiny n40 set (40 train / 10 validation) prepared as TFRecord and as
ArrayRecord, read back with as_dataset and with tfds.data_source."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mobilenet_jax.data import datasets, file_formats, imagenet_like

pytestmark = pytest.mark.xdist_group("imagenet_like")

N_TRAIN, N_VAL = 40, 10
NAME = "imagenet_like/n40"
W_LO, W_HI = imagenet_like.WIDTH_RANGE
H_LO, H_HI = imagenet_like.HEIGHT_RANGE


@pytest.fixture(scope="module")
def tfrecord_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("imagenet_like_tfrecord"))
  imagenet_like.prepare(N_TRAIN, data_dir=d, file_format="tfrecord")
  return d


@pytest.fixture(scope="module")
def array_record_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("imagenet_like_array_record"))
  imagenet_like.prepare(N_TRAIN, data_dir=d, file_format="array_record")
  return d


def _expected(split, n):
  return [imagenet_like.generate_example(0, split, i) for i in range(n)]


def test_config_names():
  assert imagenet_like.config_name(40) == "n40"
  assert imagenet_like.config_name(40, 10) == "n40"  # 10 is the default
  assert imagenet_like.config_name(2000) == "n2000"
  assert imagenet_like.config_name(123, 7, seed=5) == "n123_v7_s5"
  c = tfds.builder("imagenet_like/n2000").builder_config
  assert (c.num_train, c.num_validation, c.seed) == (2000, 80, 0)
  # Any canonical name works, listed or not.
  c = tfds.builder("imagenet_like/n123_v7_s5").builder_config
  assert (c.num_train, c.num_validation, c.seed) == (123, 7, 5)
  assert imagenet_like.builder(123, 7, seed=5).builder_config is c
  with pytest.raises(ValueError):
    tfds.builder("imagenet_like/n40_v10")  # not canonical: "n40"
  info = tfds.builder(NAME).info
  assert info.features["label"].num_classes == 1000
  assert info.features["image"].encoding_format == "jpeg"


def test_generator_is_deterministic_and_images_differ():
  a = imagenet_like.generate_example(0, "train", 3)
  assert a == imagenet_like.generate_example(0, "train", 3)
  others = [imagenet_like.generate_example(0, "train", 4),
            imagenet_like.generate_example(1, "train", 3),
            imagenet_like.generate_example(0, "validation", 3)]
  for b in others:
    assert a["image"] != b["image"]


def test_generator_matches_imagenet_statistics():
  """Sizes around 400x350, JPEGs around 110 KB, textured (not flat colour),
  labels in range."""
  sizes, hs, ws, labels = [], [], [], []
  for i in range(24):
    image, label = imagenet_like.generate_array(0, "train", i)
    h, w, c = image.shape
    assert image.dtype == np.uint8 and c == 3
    assert W_LO <= w <= W_HI and H_LO <= h <= H_HI
    jpeg = imagenet_like.encode_jpeg(image)
    assert jpeg[:2] == b"\xff\xd8"
    sizes.append(len(jpeg))
    hs.append(h)
    ws.append(w)
    labels.append(label)
    x = image.astype(np.float32)
    assert x.std() > 15  # contrast
    assert np.abs(np.diff(x, axis=1)).mean() > 3  # fine texture
    assert np.abs(x[..., 0] - x[..., 2]).mean() > 3  # colour, not grey
  assert 90_000 < np.mean(sizes) < 135_000, sizes
  assert min(sizes) > 50_000 and max(sizes) < 200_000, sizes
  assert 360 < np.mean(ws) < 440 and 310 < np.mean(hs) < 390
  assert all(0 <= l < 1000 for l in labels) and len(set(labels)) > 20


def test_tfrecord_as_dataset(tfrecord_dir):
  b = tfds.builder(NAME, data_dir=tfrecord_dir)
  assert b.info.splits["train"].num_examples == N_TRAIN
  assert b.info.splits["validation"].num_examples == N_VAL
  ds = b.as_dataset(split="validation")
  examples = sorted(tfds.as_numpy(ds), key=lambda e: e["file_name"])
  assert len(examples) == N_VAL
  for e, want in zip(examples, _expected("validation", N_VAL)):
    image = e["image"]
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert H_LO <= image.shape[0] <= H_HI and W_LO <= image.shape[1] <= W_HI
    assert e["label"] == want["label"] and 0 <= e["label"] < 1000
    assert e["file_name"].decode() == want["file_name"]
  # The stored bytes are the generator's JPEGs, unchanged.
  raw = b.as_dataset(split="train",
                     decoders={"image": tfds.decode.SkipDecoding()})
  got = {e["file_name"].decode(): e["image"] for e in tfds.as_numpy(raw)}
  want = {e["file_name"]: e["image"] for e in _expected("train", N_TRAIN)}
  assert got == want


def test_array_record_data_source(array_record_dir):
  source = tfds.data_source(NAME, data_dir=array_record_dir, split="train",
                            download=False)
  assert len(source) == N_TRAIN
  want = {e["file_name"]: e for e in _expected("train", N_TRAIN)}
  seen = set()
  for i in (N_TRAIN - 1, 0, 17):  # random access
    e = source[i]
    name = e["file_name"].decode()
    image = e["image"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert H_LO <= image.shape[0] <= H_HI and W_LO <= image.shape[1] <= W_HI
    assert e["label"] == want[name]["label"] and 0 <= e["label"] < 1000
    seen.add(name)
  assert len(seen) == 3
  raw = tfds.data_source(NAME, data_dir=array_record_dir, split="validation",
                         download=False,
                         decoders={"image": tfds.decode.SkipDecoding()})
  assert len(raw) == N_VAL
  got = {raw[i]["file_name"].decode(): bytes(raw[i]["image"])
         for i in range(N_VAL)}
  assert got == {e["file_name"]: e["image"]
                 for e in _expected("validation", N_VAL)}


def test_prepare_adds_the_other_format(tfrecord_dir):
  """A set prepared as TFRecord gains ArrayRecord files without regenerating."""
  b = imagenet_like.prepare(N_TRAIN, data_dir=tfrecord_dir,
                            file_format="array_record")
  formats = {f.value for f in b.info.available_file_formats()}
  assert {"tfrecord", "array_record"} <= formats
  # TFDS reads the added format only once told (file_formats.sync_file_formats).
  with pytest.raises(NotImplementedError):
    tfds.data_source(NAME, data_dir=tfrecord_dir, split="validation", download=False)
  builder = file_formats.sync_file_formats(tfds.builder(NAME, data_dir=tfrecord_dir))
  source = builder.as_data_source(split="validation")
  assert len(source) == N_VAL
  assert source[3]["image"].dtype == np.uint8
  raw = file_formats.sync_file_formats(tfds.builder(NAME, data_dir=tfrecord_dir)).as_data_source(
      split="validation", decoders={"image": tfds.decode.SkipDecoding()})
  got = {raw[i]["file_name"].decode(): bytes(raw[i]["image"])
         for i in range(N_VAL)}
  assert got == {e["file_name"]: e["image"]
                 for e in _expected("validation", N_VAL)}
  # (as_data_source switches its builder's info to array_record: a fresh
  # builder still reads the TFRecord files with tf.data.)
  b = tfds.builder(NAME, data_dir=tfrecord_dir)
  assert b.info.file_format.value == "tfrecord"
  assert len(b.as_dataset(split="validation")) == N_VAL


def test_the_training_pipeline_reads_it_by_name(array_record_dir):
  """A dataset name with a config ("imagenet_like/n40") through get_builder and
  the training stream at 224 px with the Inception crop."""
  from mobilenet_jax import defaults
  from mobilenet_jax.data import input_pipeline
  config = defaults.get_config()
  config.update(dataset=NAME, data_dir=str(array_record_dir), image_size=224,
                train_augment="inception", eval_split="validation")
  builder = datasets.get_builder(config)
  batch = next(input_pipeline.train_batches(config, builder, [0], 1, 4))
  assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.float32
  assert batch["label"].min() >= 0 and batch["label"].max() < 1000
