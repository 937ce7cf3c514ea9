"""Random batches with no TensorFlow: for benchmarks and machines without TF."""

from typing import Dict, Iterator

import numpy as np


def train_batches(config, local_batch: int, start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Endless batches of normal images and uniform labels, a function of the step."""
  step = start_step
  while True:
    rng = np.random.default_rng([config.seed, step])
    yield {"image": rng.standard_normal(
               (local_batch, config.image_size, config.image_size, 3), np.float32),
           "label": rng.integers(0, config.model.num_classes, local_batch)}
    step += 1
