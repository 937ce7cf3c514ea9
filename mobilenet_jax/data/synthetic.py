"""Random batches with no TensorFlow: for benchmarks and machines without TF."""

from typing import Dict, Iterator, Sequence

import numpy as np


def shard_batch(config, batch: int, step: int, shard: int) -> Dict[str, np.ndarray]:
  rng = np.random.default_rng([config.seed, step, shard])
  return {"image": rng.standard_normal(
              (batch, config.image_size, config.image_size, 3), np.float32),
          "label": rng.integers(0, config.model.num_classes, batch)}


def train_batches(config, shards: Sequence[int], batch_per_shard: int,
                  start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Endless batches of normal images and uniform labels, a function of
  (seed, step, shard) like the real pipeline's."""
  step = start_step
  while True:
    parts = [shard_batch(config, batch_per_shard, step, s) for s in shards]
    yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    step += 1
