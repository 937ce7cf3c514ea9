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
from mobilenet_jax.ops import depthwise, quantize
from mobilenet_jax.parallel import DATA


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # {} without an EMA
  rng: jax.Array


# ----------------------------------------------------------------- model ---

def create_model(model_config, dtype: str = "float32", depthwise_impl: str = "auto",
                 sync_bn: bool = False, batchnorm_impl: str = "fused",
                 platform: Optional[str] = None,
                 quantization: Optional[quantize.Quantization] = None):
  """The network, as training, evaluation, init and benchmarks all build it:
  `model_config` (config.model), the compute dtype, the depthwise and batch
  norm implementations, and with sync BN statistics averaged over DATA.

  `platform` is the platform of the devices the program is compiled for
  (`parallel.platform(mesh)`); "auto" implementations are chosen for it, not
  for the host, so a TPU program compiled on a CPU host gets TPU kernels.
  `quantization` (ops/quantize.py) makes it int8 as TFLite computes it.
  """
  check_choice("dtype", dtype, ("float32", "bfloat16"))
  return get_model(model_config, dtype=jnp.dtype(dtype),
                   bn_axis_name=DATA if sync_bn else None,
                   depthwise_impl=depthwise.resolve_impl(depthwise_impl, platform),
                   batchnorm_impl=batchnorm_impl, quantization=quantization)


def quantization(config, weights: Optional[str] = None,
                 calibrating: bool = False) -> Optional[quantize.Quantization]:
  """The config's quantization (None: float); with `weights`, post-training
  int8 with those weight scales and activations (`calibrating`: whose ranges
  are being measured)."""
  if weights is not None:
    return quantize.Quantization(weights, True, calibrating)
  if config.get("quantization", "none") == "none":  # older runs' configs lack the key
    return None
  return quantize.Quantization(config.quantize_weights, config.quantize_activations)


def config_models(config, platform: Optional[str] = None):
  """(train model, eval model) of a training config, for devices of
  `platform`. Evaluation never syncs BN: it uses the running averages."""
  def build(sync_bn):
    return create_model(config.model, config.dtype, config.depthwise_impl, sync_bn,
                        config.batchnorm_impl, platform, quantization(config))
  return build(config.sync_bn), build(False)


def initialize(model, image_size: int, rng):
  """Parameters and batch statistics for one image of `image_size`. A sync-BN
  model names a mesh axis, which exists only inside shard_map: init a model
  without it (the variables are the same)."""
  model = model.clone(bn_axis_name=None)
  variables = jax.jit(model.init)(rng, jnp.zeros((1, image_size, image_size, 3)))
  return variables["params"], variables.get("batch_stats", {})


def create_train_state(model, image_size: int, tx, rng, ema: bool) -> TrainState:
  """The step-0 state of `model` at `image_size`, with an EMA if `ema`."""
  init_rng, rng = jax.random.split(rng)
  params, batch_stats = initialize(model, image_size, init_rng)
  return state_from(params, batch_stats, tx, rng, ema)


def state_from(params, batch_stats, tx, rng, ema: bool) -> TrainState:
  """A step-0 state that starts from these weights."""
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params),
      # A copy: donated buffers must not appear twice in the state.
      ema_params=jax.tree.map(jnp.copy, params) if ema else {},
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

def train_step(state: TrainState, batch, model, tx, label_smoothing: float,
               ema_decay: float):
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
    loss = jnp.mean(cross_entropy_loss(logits, batch["label"], label_smoothing))
    return loss / lax.psum(1, DATA), (loss, logits, updates["batch_stats"])

  (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  # Per-replica BN normalises with each device's own statistics; the running
  # averages are then averaged so every replica keeps the same state.
  batch_stats = lax.pmean(batch_stats, DATA)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema_decay > 0:
    ema = optim.update_ema(ema, params, ema_decay, state.step)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  metrics = lax.pmean({"loss": loss, "accuracy": accuracy}, DATA)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state,
                            ema_params=ema)
  return new_state, metrics


def eval_step(variables, batch, model):
  """Metric sums over this device's shard, summed over DATA."""
  logits = model.apply(variables, batch["image"], train=False)
  return lax.psum(metric_sums(logits, batch["label"], batch["mask"]), DATA)
