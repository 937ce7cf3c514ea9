"""Optimisers, learning-rate schedules and the parameter EMA.

"rmsprop_tf" reproduces TF1's `tf.compat.v1.train.RMSPropOptimizer`, which the
MobileNet papers trained with: its mean square starts at ones (not zeros) and
epsilon sits inside the square root, so with epsilon=1.0 the first steps are
small instead of sign-like. Weight decay for "rmsprop_tf" and "sgd" is coupled
L2 (added to the gradient, as TF-slim's regularisation loss does); "adamw"
decays decoupled. No TensorFlow import: this runs in the training loop.
"""

import re
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from mobilenet_jax.errors import check_choice
from mobilenet_jax.models.base import bn_is_frozen

SCHEDULES = ("constant", "cosine", "exponential")
OPTIMIZERS = ("rmsprop_tf", "sgd", "adamw")


def _epochs_to_steps(epochs, steps_per_epoch):
  return int(round(epochs * steps_per_epoch))


def _decay_schedule(config, steps_per_epoch, decay_steps):
  """The schedule after warm-up; `decay_steps` is what is left of training."""
  lr = config.learning_rate
  if config.lr_schedule == "constant":
    return optax.constant_schedule(lr)
  if config.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(lr, max(decay_steps, 1))
  transition = max(_epochs_to_steps(config.lr_decay_epochs, steps_per_epoch), 1)
  return optax.exponential_decay(lr, transition, config.lr_decay_rate,
                                 staircase=True)


def create_schedule(config, steps_per_epoch: int,
                    total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0, then `config.lr_schedule`."""
  check_choice("lr_schedule", config.lr_schedule, SCHEDULES)
  warmup_steps = _epochs_to_steps(config.warmup_epochs, steps_per_epoch)
  schedule = _decay_schedule(config, steps_per_epoch,
                             total_steps - warmup_steps)
  if warmup_steps <= 0:
    return schedule
  warmup = optax.linear_schedule(0.0, config.learning_rate, warmup_steps)
  return optax.join_schedules([warmup, schedule], [warmup_steps])


def _path_str(path):
  """("block_3", "depthwise", ...) key path -> "block_3/depthwise/..."."""
  names = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  return "/".join(names)


def decay_mask(params, patterns):
  """True where a parameter is decayed: its path matches none of `patterns`."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(p.search(_path_str(path)) for p in compiled),
      params)


def _mask_fn(config):
  """A params -> mask callable, so the mask follows any params tree."""
  patterns = tuple(config.no_decay)
  return lambda params: decay_mask(params, patterns)


def _coupled_l2(config):
  """L2 added to the gradient before any scaling (TF-slim's loss term)."""
  if config.weight_decay <= 0:
    return []
  return [optax.add_decayed_weights(config.weight_decay, _mask_fn(config))]


def _base_optimizer(config, schedule):
  if config.optimizer == "rmsprop_tf":
    return _coupled_l2(config) + [optax.rmsprop(
        schedule, decay=config.rmsprop_decay, eps=config.rmsprop_epsilon,
        initial_scale=1.0, eps_in_sqrt=True, momentum=config.momentum,
        centered=False)]
  if config.optimizer == "sgd":
    return _coupled_l2(config) + [optax.sgd(
        schedule, momentum=config.momentum, nesterov=config.nesterov)]
  return [optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                      weight_decay=config.weight_decay,
                      mask=_mask_fn(config))]


def frozen_labels(frozen_bn: Sequence[str]):
  """params -> "frozen" for the batch-norm scale and offset of layers under a
  frozen module path (models.base.bn_is_frozen), "train" elsewhere."""
  def label(path, _):
    *module, bn, _ = _path_str(path).split("/")
    return "frozen" if bn == "bn" and bn_is_frozen("/".join(module), frozen_bn) else "train"
  return lambda params: jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(config, steps_per_epoch: int, total_steps: int,
                     frozen_bn: Sequence[str] = ()):
  """Returns (optax transformation, learning-rate schedule) from `config`.
  Batch norm under the module paths `frozen_bn` gets no updates at all (no
  weight decay either): fine-tuning with frozen BN."""
  check_choice("optimizer", config.optimizer, OPTIMIZERS)
  schedule = create_schedule(config, steps_per_epoch, total_steps)
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts += _base_optimizer(config, schedule)
  tx = optax.chain(*parts)
  if frozen_bn:
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               frozen_labels(frozen_bn))
  return tx, schedule


def update_ema(ema_params, params, decay, step):
  """TF-slim's EMA with num_updates: the decay ramps up, so early averages
  are not dominated by the random initialisation."""
  step = jnp.asarray(step, jnp.float32)
  decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(
      lambda e, p: (e - (1.0 - decay) * (e - p)).astype(e.dtype),
      ema_params, params)

