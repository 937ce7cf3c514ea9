"""The Grain input pipeline on its own: order, sharding, resume, evaluation,
crop-window decoding, and how datasets are prepared (ArrayRecord)."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mobilenet_jax import defaults
from mobilenet_jax.data import datasets, imagenet_like, input_pipeline, preprocess
from mobilenet_jax.errors import ConfigError


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  """The default config, its embedded digits prepared in a fresh data_dir."""
  config = defaults.get_config()
  config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  return config, datasets.get_builder(config)


def with_split(config, split):
  config = config.copy_and_resolve_references()
  config.train_split = config.eval_split = split
  return config


def examples_seen(source, num_shards, per_device, steps, seed=0):
  """{epoch: Counter of examples} over `steps` global batches, read as
  processes would: one TrainBatch per device (shard)."""
  seen = collections.defaultdict(collections.Counter)
  for shard in range(num_shards):
    rows = input_pipeline.Rows(num_shards * per_device, per_device, (shard,))
    batch = input_pipeline.TrainBatch(source, rows, seed, preprocess_fn=None)
    for step in range(steps):
      for epoch, example in zip(*batch.examples(step)):
        seen[int(epoch)][int(example)] += 1
  return seen


@pytest.mark.parametrize("size", [37, 64, 101])
@pytest.mark.parametrize("num_shards", [2, 4])
def test_every_example_once_per_epoch_across_devices(digits, size, num_shards):
  """Odd split sizes too: batches straddle epochs, and each epoch still
  holds each example exactly once, in a new order."""
  config, builder = digits
  source = input_pipeline.open_split(builder, f"train[:{size}]")
  per_device = 3
  steps = 4 * size // (num_shards * per_device) + 1  # a bit over 4 epochs
  seen = examples_seen(source, num_shards, per_device, steps)
  for epoch in range(4):
    assert seen[epoch] == collections.Counter(range(size)), epoch
  orders = []
  for epoch in range(2):
    rows = input_pipeline.Rows(size, size, (0,))
    batch = input_pipeline.TrainBatch(source, rows, 0, preprocess_fn=None)
    orders.append(list(batch.examples(epoch)[1]))
  assert orders[0] != orders[1] and sorted(orders[0]) == list(range(size))


def test_batches_depend_on_device_position_not_process(digits):
  """Two processes with two devices each read exactly the rows that one
  process with four devices does; the labels are those of the examples."""
  config, builder = digits
  config = with_split(config, "train[:50]")
  one = input_pipeline.train_batches(config, builder, [0, 1, 2, 3], 4, 3, workers=0)
  first = input_pipeline.train_batches(config, builder, [0, 1], 4, 3, workers=0)
  second = input_pipeline.train_batches(config, builder, [2, 3], 4, 3, workers=0)
  source = input_pipeline.open_split(builder, "train[:50]")
  for step in range(6):
    whole, a, b = next(one), next(first), next(second)
    for key in whole:
      np.testing.assert_array_equal(whole[key], np.concatenate([a[key], b[key]]))
    rows = input_pipeline.Rows(12, 3, (0, 1, 2, 3))
    _, examples = input_pipeline.TrainBatch(source, rows, 0, None).examples(step)
    np.testing.assert_array_equal(whole["label"], source.labels[examples])
    assert whole["image"].shape == (12, 32, 32, 3)
    assert -1 <= whole["image"].min() < 0 < whole["image"].max() <= 1


def test_augmentation_is_a_function_of_seed_epoch_and_example(digits):
  """The same example in another batch position (another device count)
  gets the same pixels; in the next epoch, other pixels."""
  config, builder = digits
  config = with_split(config, "train[:12]")
  source = input_pipeline.open_split(builder, "train[:12]")
  images = {}
  for num_shards, per_device in ((1, 12), (4, 3)):
    stream = input_pipeline.train_batches(config, builder, range(num_shards), num_shards,
                                          per_device, workers=0)
    rows = input_pipeline.Rows(12, per_device, tuple(range(num_shards)))
    order = input_pipeline.TrainBatch(source, rows, 0, None)
    for step in range(2):
      batch = next(stream)
      epochs, examples = order.examples(step)
      for e, i, image in zip(epochs, examples, batch["image"]):
        key = (int(e), int(i))
        if key in images:
          np.testing.assert_array_equal(images[key], image)
        images[key] = image
  assert len(images) == 24  # 12 examples x 2 epochs
  assert not np.array_equal(images[(0, 5)], images[(1, 5)])


class CountingBatch(input_pipeline.TrainBatch):
  calls = 0

  def __call__(self, step):
    CountingBatch.calls += 1
    return super().__call__(step)


def test_state_restores_the_position_without_replaying(digits, monkeypatch):
  """An iterator's saved state, set on a new one, continues with the same
  batches, and computes only what it prefetches: nothing of the steps before."""
  config, builder = digits
  stream = input_pipeline.train_batches(config, builder, [0], 1, 8, workers=0)
  for _ in range(5):
    next(stream)
  state = stream.get_state()
  expected = [next(stream) for _ in range(3)]
  monkeypatch.setattr(input_pipeline, "TrainBatch", CountingBatch)
  far = input_pipeline.train_batches(config, builder, [0], 1, 8, first_step=10**9,
                                     workers=0)
  next(far)  # a billion steps in: the same cost as step 0
  assert CountingBatch.calls <= 1 + 2 * 8  # the batch and the prefetch buffer
  restored = input_pipeline.train_batches(config, builder, [0], 1, 8, workers=0)
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(digits):
  config, builder = digits
  config = with_split(config, "train[:40]")
  threads = input_pipeline.train_batches(config, builder, [0, 1], 2, 4, workers=0)
  workers = input_pipeline.train_batches(config, builder, [0, 1], 2, 4, workers=2)
  for _ in range(7):
    a, b = next(threads), next(workers)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  state = workers.get_state()
  after = [next(workers)["image"] for _ in range(2)]
  resumed = input_pipeline.train_batches(config, builder, [0, 1], 2, 4, workers=2)
  resumed.set_state(state)
  for want in after:
    np.testing.assert_array_equal(next(resumed)["image"], want)


@pytest.mark.parametrize("size", [7, 64, 360])
def test_evaluation_counts_every_example_once_across_processes(digits, size):
  config, builder = digits
  split = f"test[:{size}]"
  config = with_split(config, split)
  source = input_pipeline.open_split(builder, split)
  labels, count = [], 0
  for shards in ([0, 1], [2, 3]):  # two processes of two devices
    for batch in input_pipeline.eval_batches(config, builder, shards, 4, 5):
      assert batch["image"].shape == (10, 32, 32, 3)
      real = batch["mask"] == 1
      labels += list(batch["label"][real])
      count += len(batch["mask"])
  assert sorted(labels) == sorted(source.labels)
  assert count == 20 * -(-size // 20)  # whole global batches, padded


def test_first_examples_are_the_eval_preprocessing_of_the_split(digits):
  config, builder = digits
  images, labels = input_pipeline.first_examples(config, builder, "test", 10_000)
  assert images.shape == (360, 32, 32, 3) and len(labels) == 360
  batch = next(input_pipeline.eval_batches(config, builder, [0], 1, 360))
  np.testing.assert_array_equal(batch["image"], images)


@pytest.mark.parametrize("recipe,train", [("inception", True), ("center_crop", False)])
def test_jpeg_decodes_only_the_crop_window_with_the_same_pixels(recipe, train):
  """Decoding inside the window gives the window of the full decode (up to
  chroma upsampling at its edges), for training's random crop and
  evaluation's central one."""
  jpegs = [imagenet_like.generate_example(0, "train", i)["image"] for i in range(6)]
  seeds = np.stack([preprocess.example_seed(0, 0, i) for i in range(6)])
  window = preprocess.Preprocess(recipe, 96, flip=True, train=train)(jpegs, seeds)
  whole = preprocess.Preprocess(recipe, 96, flip=True, train=train, decode_window=False)
  whole = whole(jpegs, seeds)
  assert window.shape == (6, 96, 96, 3)
  diff = np.abs(window - whole)
  assert diff.mean() < 1e-3 and (diff > 0.02).mean() < 0.01
  # The crops differ per example, and are random crops, not the whole image.
  plain = preprocess.Preprocess("resize", 96, train=False)(jpegs)
  assert np.abs(window - plain).mean() > 0.05


def test_tfrecord_only_dataset_is_refused_then_converted(tmp_path):
  """A dataset in TFDS's default TFRecord format: one error naming the
  conversion command; the conversion adds ArrayRecord without changing the
  TFRecord files, and the pipeline then reads the same examples."""
  config = defaults.get_config()
  config.data_dir = str(tmp_path)
  tfds.builder("sklearn_digits", data_dir=str(tmp_path),
               file_format="tfrecord").download_and_prepare()
  before = sorted(p.name for p in tmp_path.glob("sklearn_digits/*/*"))
  with pytest.raises(ConfigError) as e:
    datasets.get_builder(config)
  message = str(e.value)
  assert "tfrecord" in message and "\n" not in message
  assert f"python -m mobilenet_jax.tools.prepare_data --dataset=sklearn_digits " \
         f"--data_dir={tmp_path}" in message
  assert sorted(p.name for p in tmp_path.glob("sklearn_digits/*/*")) == before
  builder = datasets.prepare(config)
  added = set(p.name for p in tmp_path.glob("sklearn_digits/*/*")) - set(before)
  assert {"sklearn_digits-test.array_record-00000-of-00001",
          "sklearn_digits-train.array_record-00000-of-00001"} <= added
  source = input_pipeline.open_split(datasets.get_builder(config), "train")
  reference = tfds.as_numpy(tfds.builder("sklearn_digits", data_dir=str(tmp_path))
                            .as_dataset(split="train"))
  for i, example in enumerate(reference):
    np.testing.assert_array_equal(source.images[i], example["image"])
    assert source.labels[i] == example["label"]
  assert i + 1 == len(source) == builder.info.splits["train"].num_examples
