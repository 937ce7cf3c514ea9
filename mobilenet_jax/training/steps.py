"""The train and eval steps and what they need: model, state, loss, metrics.

Written for one device's shard of the batch; `parallel.data_parallel` makes
them global. No TensorFlow or clu here, so benchmarks and GPU machines
without TF can import this.
"""

from typing import Any, Dict, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from mobilenet_jax.training import optim
from mobilenet_jax.errors import check_choice
from mobilenet_jax.models import get_model
from mobilenet_jax.parallel import DATA


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # {} when config.ema_decay == 0
  rng: jax.Array


# ----------------------------------------------------------------- model ---

def create_model(config, sync_bn: Optional[bool] = None):
  """The configured network; with sync BN it averages statistics over DATA."""
  check_choice("dtype", config.dtype, ("float32", "bfloat16"))
  sync = config.sync_bn if sync_bn is None else sync_bn
  return get_model(config.model, dtype=jnp.dtype(config.dtype),
                   bn_axis_name=DATA if sync else None,
                   depthwise_impl=config.depthwise_impl)


def initialize(model, image_size: int, rng):
  """Parameters and batch statistics for one image of `image_size`."""
  variables = jax.jit(model.init)(rng, jnp.zeros((1, image_size, image_size, 3)))
  return variables["params"], variables.get("batch_stats", {})


def create_train_state(config, tx, rng) -> TrainState:
  """Initial state. Initialised with the plain model: a sync-BN model names a
  mesh axis, which exists only inside shard_map; the variables are the same."""
  init_rng, rng = jax.random.split(rng)
  params, batch_stats = initialize(
      get_model(config.model), config.image_size, init_rng)
  return state_from(params, batch_stats, config, tx, rng)


def state_from(params, batch_stats, config, tx, rng) -> TrainState:
  """A step-0 state that starts from these weights."""
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params),
      # A copy: donated buffers must not appear twice in the state.
      ema_params=jax.tree.map(jnp.copy, params) if config.ema_decay > 0 else {},
      rng=rng)


# ---------------------------------------------------------- loss, metrics ---

def cross_entropy_loss(logits, labels, smoothing: float):
  """Mean softmax cross-entropy with label smoothing, per example."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def metric_sums(logits, labels, mask) -> Dict[str, jax.Array]:
  """Sums over the (masked) examples: loss, top-1 and top-5 hits, count."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  k = min(5, logits.shape[-1])
  top5 = jnp.any(lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
  return {"loss": jnp.sum(loss * mask),
          "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          "top5": jnp.sum(top5 * mask),
          "count": jnp.sum(mask)}


# ------------------------------------------------------------------ steps ---

def train_step(state: TrainState, batch, model, tx, config):
  """One step on this device's shard of the batch.

  The loss is this shard's mean divided by the device count: the gradient
  of the replicated parameters, which shard_map sums over devices, is then
  the gradient of the global batch's mean loss.
  """
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                           lax.axis_index(DATA))

  def loss_fn(params):
    logits, updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"],
        train=True, mutable=["batch_stats"], rngs={"dropout": rng})
    loss = jnp.mean(cross_entropy_loss(logits, batch["label"], config.label_smoothing))
    return loss / lax.psum(1, DATA), (loss, logits, updates["batch_stats"])

  (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  # Per-replica BN normalises with each device's own statistics; the running
  # averages are then averaged so every replica keeps the same state.
  batch_stats = lax.pmean(batch_stats, DATA)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if config.ema_decay > 0:
    ema = optim.update_ema(ema, params, config.ema_decay, state.step)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  metrics = lax.pmean({"loss": loss, "accuracy": accuracy}, DATA)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state,
                            ema_params=ema)
  return new_state, metrics


def eval_step(variables, batch, model):
  """Metric sums over this device's shard, summed over DATA."""
  logits = model.apply(variables, batch["image"], train=False)
  return variables, lax.psum(metric_sums(logits, batch["label"], batch["mask"]), DATA)
