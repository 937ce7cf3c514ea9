"""Default config: a small MobileNetV2 on the embedded 8x8 digits set.

Every field, its default and what it allows is declared once, in
mobilenet_jax/defaults.py; other configs start from it and change only what
differs, so a diff of two configs is the experiment.
"""

from mobilenet_jax import defaults


def get_config(arg=None):
  return defaults.get_config(arg)
