"""What the shipped sweeps share: a short run of configs/default.py.

Short enough that a sweep of 3 seeds finishes on a 2-core CPU: 10 epochs of
the digits (220 steps of batch 64) instead of the default's 60, evaluated 5
times so the curves have shape.
"""

from mobilenet_jax import defaults

EPOCHS = 10
EVAL_EVERY = 44  # steps: 5 evaluations over 220


def base_config():
  config = defaults.get_config()
  config.num_epochs = EPOCHS
  config.eval_every_steps = EVAL_EVERY
  config.checkpoint_every_steps = EVAL_EVERY
  config.log_every_steps = EVAL_EVERY
  return config


def model(name: str, **changes):
  """A model config with the default's digits settings (10 classes, BN
  momentum 0.9, no dropout) and `changes`."""
  m = defaults.model_config(name)
  m.num_classes, m.bn_momentum, m.dropout = 10, 0.9, 0.0
  m.update(changes)
  return m


NOTES = [
    f"Short runs: {EPOCHS} of the default's 60 epochs (the full default reaches "
    "96.7-97.5% top-1). Differences here are in how fast a variant learns in a fixed "
    "short budget, not in converged accuracy; the paper's numbers are converged "
    "ImageNet results.",
    "Train times were measured on a shared 2-core CPU while other jobs ran; "
    "compare them only roughly.",
]
