"""Training and evaluation: small functions, and the loop that joins them.

train_and_evaluate(config, workdir) is the whole job: input pipeline, model,
optimizer, checkpoint (resume), the loop of data-parallel train steps with
periodic evaluation, and results.json.
"""

import functools
import math
import os
import signal
import time
from typing import Dict, List, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions

from mobilenet_jax import defaults, madds, parallel, records
from mobilenet_jax.training import checkpoint, optim, run
from mobilenet_jax.errors import ConfigError
from mobilenet_jax.training.steps import (TrainState, config_models, create_train_state,
                                          eval_step, state_from, train_step)


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); the message says why."""


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint was saved and the run can be resumed."""


# --------------------------------------------------------------- the data ---

def open_dataset(config):
  """The prepared TFDS builder, or None for synthetic data (no TensorFlow)."""
  if config.dataset == "synthetic":
    return None
  from mobilenet_jax.data import datasets
  builder = datasets.get_builder(config)
  for split in (config.train_split, config.eval_split):
    try:
      builder.info.splits[split]  # a name, or a slice such as "train[:90%]"
    except (KeyError, ValueError):
      raise ConfigError(f"split {split!r} is not in {config.dataset}; it has "
                        f"{', '.join(builder.info.splits)} (or slices of them, "
                        "e.g. 'train[:90%]').") from None
  return builder


def train_batch_size(config) -> int:
  return parallel.batch_sizes(config.batch_size, config.per_device_batch_size)[0]


def eval_batch_size(config) -> int:
  return parallel.batch_sizes(config.eval_batch_size,
                              config.eval_per_device_batch_size, "eval_batch_size")[0]


def input_layout(config, mesh) -> dict:
  """What the saved position of a training stream is relative to: a saved
  input state is restored only into a stream of the same layout."""
  from mobilenet_jax.data import input_pipeline
  return {"global_batch": train_batch_size(config), "devices": mesh.size,
          "processes": jax.process_count(),
          "workers": input_pipeline.resolve_workers(config)}


def train_iterator(config, builder, mesh, first_step: int, end_step: int):
  """This process's local numpy batches of steps first_step .. end_step - 1:
  one shard of the data per device, so the stream does not depend on the
  process count."""
  shards = parallel.local_shards(mesh)
  per_device = train_batch_size(config) // mesh.size
  if builder is None:
    from mobilenet_jax.data import synthetic
    return synthetic.train_batches(config, shards, per_device, first_step)
  from mobilenet_jax.data import input_pipeline
  return input_pipeline.train_batches(config, builder, shards, mesh.size,
                                      per_device, first_step, end_step)


def resume_input(config, builder, mesh, manager, saved_step, meta, start_step,
                 num_steps):
  """The training stream from `start_step` on, and its record for the meta.

  With the layout it was saved in, the stream is rebuilt as it was and its
  saved state restored (Grain: the position, in constant time); after a
  change of layout (devices, batch, workers) it starts at `start_step`'s
  position, which is the same data.
  """
  layout = input_layout(config, mesh)
  saved = (meta or {}).get("input")
  if builder is not None and saved and saved["layout"] == layout:
    train_iter = train_iterator(config, builder, mesh, saved["first_step"], num_steps)
    checkpoint.restore_input(manager, saved_step, train_iter)
    return train_iter, saved
  if saved:
    logging.info("Input layout changed from %s to %s: the data stream starts at "
                 "step %d's position.", saved["layout"], layout, start_step)
  record = {"layout": layout, "first_step": start_step}
  return train_iterator(config, builder, mesh, start_step, num_steps), record


def steps_per_epoch(config, builder) -> int:
  global_batch = train_batch_size(config)
  if builder is None:
    return 1000  # synthetic data has no epochs; a nominal one for schedules
  from mobilenet_jax.data import input_pipeline
  return max(1, input_pipeline.num_examples(builder, config.train_split) // global_batch)


def total_steps(config, per_epoch: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  if config.dataset == "synthetic":
    raise ConfigError("dataset='synthetic' has no epochs; set "
                      "--config.num_train_steps to a positive number.")
  return max(1, int(math.ceil(config.num_epochs * per_epoch)))


def evaluate(eval_fn, state: TrainState, config, builder, mesh) -> Dict[str, float]:
  """Loss, top-1 and top-5 over the whole eval split, each example once: the
  raw weights as eval_*, the EMA weights (if kept) as eval_*_ema, both from
  one pass over the data."""
  from mobilenet_jax.data import input_pipeline
  weights = {"": state.params}
  if config.ema_decay > 0:
    weights["_ema"] = state.ema_params
  per_device = eval_batch_size(config) // mesh.size
  totals = {}
  for batch in input_pipeline.eval_batches(config, builder, parallel.local_shards(mesh),
                                           mesh.size, per_device):
    batch = parallel.shard_batch(batch, mesh)
    for suffix, params in weights.items():
      sums = eval_fn({"params": params, "batch_stats": state.batch_stats}, batch)
      totals[suffix] = (sums if suffix not in totals
                        else jax.tree.map(jnp.add, totals[suffix], sums))
  out = {}
  for suffix, sums in jax.device_get(totals).items():
    count = float(sums["count"])
    out.update({f"eval_loss{suffix}": float(sums["loss"]) / count,
                f"eval_top1{suffix}": float(sums["top1"]) / count,
                f"eval_top5{suffix}": float(sums["top5"]) / count,
                f"eval_count{suffix}": int(count)})
  return out


# ------------------------------------------------ starting from weights ---

def warm_start(state: TrainState, config, tx) -> TrainState:
  """`state` with the weights of config.init_from (the workdir of a run or of
  `convert`) and a fresh optimizer; the classifier stays new if the class
  count differs (fine-tuning)."""
  saved, _, step = checkpoint.restore_on_one_device(config.init_from)
  params, kept = checkpoint.merge_weights(state.params, saved["params"], config.init_from)
  stats, _ = checkpoint.merge_weights(state.batch_stats, saved.get("batch_stats", {}),
                                      config.init_from)
  logging.info("Initialised from step %d of %s%s.", step, config.init_from,
               f"; new (not loaded): {', '.join(kept)}" if kept else "")
  return state_from(params, stats, tx, state.rng, ema=config.ema_decay > 0)


def check_eval_only(config, builder, manager):
  if not config.eval_only:
    return
  if builder is None:
    raise ConfigError("config.eval_only needs a dataset with an eval split; "
                      "'synthetic' has none.")
  if not config.init_from and manager.latest_step() is None:
    raise ConfigError("config.eval_only evaluates trained weights, and there are "
                      "none: set --config.init_from=DIR (a run's or convert's "
                      "workdir), or use the --workdir of a run.")


# ------------------------------------------------------------ bookkeeping ---

def first_bad_step(losses: List[jax.Array], first_step: int) -> Optional[int]:
  values = np.asarray(jax.device_get(losses))
  bad = np.flatnonzero(~np.isfinite(values))
  return first_step + int(bad[0]) if bad.size else None


def add_log_file(workdir: str):
  """Also writes the log (metrics included) to workdir/train.log as text."""
  import logging as py_logging
  handler = py_logging.FileHandler(os.path.join(workdir, "train.log"))
  handler.setFormatter(py_logging.Formatter(
      f"%(asctime)s [p{jax.process_index()}] %(message)s"))
  logging.get_absl_logger().addHandler(handler)
  return handler


class SigtermFlag:
  """Remembers a SIGTERM so the loop can save and stop between steps."""

  def __init__(self):
    self.received = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


# -------------------------------------------------------------- the loop ---

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains config's model on config's data, evaluating; returns the results."""
  defaults.validate(config)  # before anything is written
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  log_handler = add_log_file(workdir)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)

  # Model, optimizer, state.
  mesh = parallel.create_mesh()
  global_batch = train_batch_size(config)
  eval_batch_size(config)  # checked before any work is done
  model, eval_model = config_models(config, parallel.platform(mesh))
  counts = madds.count(config.model, config.image_size)
  manager = checkpoint.create_manager(workdir, config.keep_checkpoints)

  # The data decides the epoch length, so it comes before the optimizer;
  # the iterator is only started once the resume step is known.
  builder = open_dataset(config)
  check_eval_only(config, builder, manager)
  per_epoch = steps_per_epoch(config, builder)
  num_steps = total_steps(config, per_epoch)
  tx, schedule = optim.create_optimizer(config, per_epoch, num_steps,
                                       frozen_bn=model.frozen_bn_paths())
  state = create_train_state(eval_model, config.image_size, tx, jax.random.key(config.seed),
                             ema=config.ema_decay > 0)
  if config.init_from and manager.latest_step() is None:
    state = warm_start(state, config, tx)
  state = parallel.replicate(state, mesh)
  saved_step, meta = checkpoint.latest_meta(manager)
  if saved_step is None:
    meta = run.new_meta(config)
  else:
    run.check_resumable(meta, config, workdir)
    state = checkpoint.restore_state(manager, saved_step, state)
    logging.info("Resumed from step %d in %s.", int(state.step), workdir)
  start_step = int(state.step)
  train_iter, meta["input"] = resume_input(config, builder, mesh, manager, saved_step,
                                           meta, start_step, num_steps)
  if start_step == 0 and is_main:
    parameter_overview.log_parameter_overview(state.params)
    writer.write_hparams({k: v for k, v in flax.traverse_util.flatten_dict(
        config.to_dict(), sep=".").items() if isinstance(v, (int, float, str, bool))})

  p_train = parallel.data_parallel(
      functools.partial(train_step, model=model, tx=tx,
                        label_smoothing=config.label_smoothing, ema_decay=config.ema_decay),
      mesh, donate_state=True)
  p_eval = parallel.data_parallel(
      functools.partial(eval_step, model=eval_model), mesh)

  if config.eval_only:  # the loop below then does nothing
    num_steps = start_step
    meta["history"].append({"step": start_step, **evaluate(p_eval, state, config, builder, mesh)})
    logging.info("eval only, step %d: %s", start_step, meta["history"][-1])
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  sigterm = SigtermFlag()
  losses, checked_step, train_metrics = [], start_step, []
  t0 = time.time() - meta["train_time_s"]
  try:
    for step in range(start_step + 1, num_steps + 1):
      batch = parallel.shard_batch(next(train_iter), mesh)
      state, metrics = p_train(state, batch)
      losses.append(metrics["loss"])
      train_metrics.append(metrics)
      report(step)
      last = step == num_steps
      log_now = step % config.log_every_steps == 0 or last
      eval_now = builder is not None and (step % config.eval_every_steps == 0 or last)
      save_now = step % config.checkpoint_every_steps == 0 or last or sigterm.received
      if log_now or eval_now or save_now:
        bad = first_bad_step(losses, checked_step + 1)
        if bad is not None:
          raise TrainingError(
              f"loss is not finite at step {bad}; stopped. The last good checkpoint "
              f"(step {manager.latest_step()}) in {workdir} is intact; lower "
              "config.learning_rate or set config.grad_clip_norm.")
        losses, checked_step = [], step
      if log_now:
        summary = jax.tree.map(lambda *x: float(np.mean(x)), *jax.device_get(train_metrics))
        summary["learning_rate"] = float(schedule(step - 1))
        writer.write_scalars(step, {f"train_{k}": v for k, v in summary.items()})
        logging.info("step %d/%d: loss %.4f, accuracy %.3f, lr %.3g", step, num_steps,
                     summary["loss"], summary["accuracy"], summary["learning_rate"])
        train_metrics = []
      if eval_now:
        with report.timed("eval"):
          result = evaluate(p_eval, state, config, builder, mesh)
        writer.write_scalars(step, result)
        meta["history"].append({"step": step, **result})
        logging.info("step %d eval: %s", step, ", ".join(
            f"{k} {v:.4f}" for k, v in result.items()))
      if save_now:
        meta["train_time_s"] = time.time() - t0
        with report.timed("checkpoint"):
          checkpoint.save(manager, step, state, meta,
                          train_iter if builder is not None else None)
      if sigterm.received:
        raise Preempted(f"SIGTERM: saved step {step} in {workdir}; run the same "
                        "command again to resume.")
  finally:
    sigterm.restore()
    writer.flush()

  results = {
      "config": config.to_dict(),
      "num_devices": jax.device_count(),
      "num_processes": jax.process_count(),
      "device_kind": jax.devices()[0].device_kind,
      "global_batch_size": global_batch,
      "steps": num_steps,
      "train_time_s": meta["train_time_s"],
      **counts,
      **(meta["history"][-1] if meta["history"] else {}),
      "history": meta["history"],
  }
  results.pop("step", None)
  if is_main:
    records.write_results(workdir, results)
  logging.get_absl_logger().removeHandler(log_handler)
  return results
