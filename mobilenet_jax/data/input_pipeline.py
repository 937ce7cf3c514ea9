"""Grain input pipelines over TFDS random-access sources -> local numpy batches.

Order. Each epoch is a new global permutation of the whole training split
(Grain's index shuffle seeded with config.seed, reseeded every epoch).
Position g of the endless stream is example order(g) of epoch g // N;
global batch s holds positions [s B, (s + 1) B), and device d of the mesh
its rows [d b, (d + 1) b). A process reads only its devices' rows, so:

* every example is seen exactly once per epoch across all devices;
* the batches are the same however the devices are spread over processes
  (2 processes x 2 devices see the batches of 1 x 4) and however many
  worker processes prepare them;
* augmentation is a pure function of (seed, epoch, example)
  (preprocess.example_seed).

Resume. The stream is a Grain MapDataset indexed by step, so its iterator's
state is a position: training saves it in every checkpoint and restores it
in constant time, whatever the step (docs/input.md).

Evaluation batches are padded to full size and carry a `mask`, so every
example counts once across processes.

Data are read by index (`tfds.data_source`), so a dataset must be stored as
ArrayRecord; `datasets.py` prepares it, or converts a TFRecord one.
"""

import ctypes
import dataclasses
import functools
import os
import signal
from typing import Dict, Optional, Sequence, Tuple

import grain
import numpy as np
from absl import flags
import tensorflow_datasets as tfds

from mobilenet_jax.data import preprocess

CACHE_LIMIT_BYTES = 1 << 30  # smaller splits are decoded once, into memory
PR_SET_PDEATHSIG = 1  # linux/prctl.h


# ------------------------------------------------------------- sources ---

class InMemory:
  """A small split decoded once: uint8 pixels (N, H, W, C) and labels."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self):
    return len(self.labels)

  def read(self, indices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    return self.images[indices], self.labels[indices]


class Encoded:
  """A split read by index from its ArrayRecord files, images left encoded
  (JPEGs are decoded later, inside their crop window)."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def read(self, indices: np.ndarray) -> Tuple[list, np.ndarray]:
    records = self.source.__getitems__([int(i) for i in indices])
    return [r["image"] for r in records], np.array([r["label"] for r in records])


@functools.lru_cache(maxsize=4)
def open_split(builder, split: str):
  """`split` of a prepared ArrayRecord builder, as a random-access source;
  opened (a small split: decoded) once per builder, not at every evaluation."""
  image = builder.info.features["image"]
  small = (builder.info.dataset_size or 0) < CACHE_LIMIT_BYTES
  fixed = image.shape[0] is not None and image.shape[1] is not None
  if small and fixed:
    source = builder.as_data_source(split=split)
    records = source.__getitems__(range(len(source)))
    return InMemory(np.stack([r["image"] for r in records]),
                    np.array([r["label"] for r in records]))
  return Encoded(builder.as_data_source(
      split=split, decoders={"image": tfds.decode.SkipDecoding()}))


def num_examples(builder, split: str) -> int:
  """Examples in the whole split (all processes)."""
  return builder.info.splits[split].num_examples


# ----------------------------------------------------------- positions ---

@dataclasses.dataclass(frozen=True)
class Rows:
  """Where this process's rows lie in each global batch: the rows of its
  devices (`shards`, their positions in the mesh), `per_device` each."""
  global_batch: int
  per_device: int
  shards: Tuple[int, ...]

  def positions(self, step: int) -> np.ndarray:
    """Positions in the global stream of this process's rows of batch `step`."""
    rows = np.concatenate([np.arange(s * self.per_device, (s + 1) * self.per_device)
                           for s in self.shards])
    return step * self.global_batch + rows


class TrainBatch:
  """Step -> this process's training batch (a Grain map; picklable)."""

  def __init__(self, source, rows: Rows, seed: int, preprocess_fn):
    self.source, self.rows, self.seed = source, rows, seed
    self.order = grain.MapDataset.range(len(source)).shuffle(seed=seed)
    self.preprocess = preprocess_fn

  def examples(self, step: int) -> Tuple[np.ndarray, np.ndarray]:
    """(epoch, example index) of each of this process's rows of `step`."""
    positions = self.rows.positions(step)
    return (positions // len(self.source),
            np.array([self.order[int(g)] for g in positions]))

  def __call__(self, step: int) -> Dict[str, np.ndarray]:
    epochs, examples = self.examples(step)
    images, labels = self.source.read(examples)
    seeds = np.stack([preprocess.example_seed(self.seed, e, i)
                      for e, i in zip(epochs, examples)])
    return {"image": self.preprocess(images, seeds), "label": labels}


class EvalBatch:
  """Step -> this process's evaluation batch; positions past the split are
  padding with mask 0."""

  def __init__(self, source, rows: Rows, preprocess_fn):
    self.source, self.rows, self.preprocess = source, rows, preprocess_fn

  def __call__(self, step: int) -> Dict[str, np.ndarray]:
    positions = self.rows.positions(step)
    real = positions < len(self.source)
    images, labels = self.source.read(np.where(real, positions, 0))
    return {"image": self.preprocess(images), "label": labels,
            "mask": real.astype(np.float32)}


# ------------------------------------------------------------- streams ---

def resolve_workers(config) -> int:
  """config.input_workers, or the default for this machine's CPU count."""
  if config.input_workers is not None:
    return config.input_workers
  return default_workers(os.cpu_count() or 1)


def default_workers(cpus: int) -> int:
  """Worker processes for `cpus` cores. TensorFlow already decodes a batch's
  JPEGs on all cores inside one process; workers take over the Python
  share (indexing, reading, stacking) once there are cores to spare
  (docs/input.md, throughput table)."""
  return 0 if cpus < 8 else min(16, cpus // 4)


def die_with_parent():
  """Be killed when the parent process dies, even by SIGKILL, instead of
  waiting for batches nobody takes (Linux; elsewhere a killed training
  process's workers live on until they are stopped)."""
  try:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
  except OSError:
    return
  libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
  if os.getppid() == 1:  # the parent died before prctl
    os._exit(1)


def init_worker(*_):
  """Runs first in each Grain worker process."""
  die_with_parent()
  preprocess.single_threaded_ops()


def iterate(batches: grain.MapDataset, workers: int) -> grain.DatasetIterator:
  """Batches computed ahead, by threads (workers=0) or worker processes;
  in order either way."""
  threads = 1 if workers else min(16, (os.cpu_count() or 1) + 1)
  ds = batches.to_iter_dataset(grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=2 * threads))
  if workers:
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags: a
      flags.FLAGS.mark_as_parsed()   # notebook or test has parsed none
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=2),
                        worker_init_fn=init_worker)
  return iter(ds)


def train_preprocess(config):
  return preprocess.Preprocess(config.train_augment, config.image_size,
                               flip=config.random_flip)


def eval_preprocess(config):
  return preprocess.Preprocess(config.eval_preprocess, config.image_size, train=False)


def train_batches(config, builder, shards: Sequence[int], num_shards: int,
                  batch_per_shard: int, first_step: int = 0,
                  end_step: Optional[int] = None, workers: Optional[int] = None,
                  preprocess_fn=None) -> grain.DatasetIterator:
  """This process's training batches for steps first_step .. end_step - 1
  (endless if None): its `shards` (device positions in a mesh of
  `num_shards`), `batch_per_shard` rows each. The iterator's get_state /
  set_state hold its position. `workers` and `preprocess_fn` default to
  the config's."""
  rows = Rows(num_shards * batch_per_shard, batch_per_shard, tuple(shards))
  source = open_split(builder, config.train_split)
  steps = grain.MapDataset.range(first_step, end_step or 2**62)
  batches = steps.map(TrainBatch(source, rows, config.seed,
                                 preprocess_fn or train_preprocess(config)))
  return iterate(batches, resolve_workers(config) if workers is None else workers)


def eval_steps(builder, split: str, global_batch: int) -> int:
  return -(-num_examples(builder, split) // global_batch)


def eval_batches(config, builder, shards: Sequence[int], num_shards: int,
                 batch_per_shard: int) -> grain.DatasetIterator:
  """This process's share of every evaluation batch: each example of the
  split once across processes, the last batch padded (mask 0)."""
  rows = Rows(num_shards * batch_per_shard, batch_per_shard, tuple(shards))
  steps = eval_steps(builder, config.eval_split, rows.global_batch)
  source = open_split(builder, config.eval_split)
  batches = grain.MapDataset.range(steps).map(
      EvalBatch(source, rows, eval_preprocess(config)))
  return iterate(batches, workers=0)


def first_examples(config, builder, split: str, limit: int):
  """(images, labels) of the first `limit` examples of `split`, preprocessed
  for evaluation, as numpy: calibration and checks of exported models."""
  source = open_split(builder, split)
  images, labels = source.read(np.arange(min(limit, len(source))))
  return eval_preprocess(config)(images), labels
