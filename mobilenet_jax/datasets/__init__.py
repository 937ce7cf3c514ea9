"""TFDS builders that need no download. Importing registers them with TFDS."""

from mobilenet_jax.datasets import sklearn_digits  # noqa: F401  (registers)
