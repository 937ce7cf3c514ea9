"""Training and evaluation: small functions, and the loop that joins them.

train_and_evaluate(config, workdir) is the whole job: it takes the workdir
(training/workdir.py), sets up input pipeline, model and optimizer, then
init_or_restore (a fresh or warm-started state, or the newest checkpoint that
restores), train (the loop of data-parallel steps with periodic evaluation
and checkpoints) or evaluate_only, and write_results (results.json).
"""

import dataclasses
import functools
import logging as py_logging
import math
import os
import signal
import time
from typing import Any, Dict, List, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions

from mobilenet_jax import madds, parallel, records
from mobilenet_jax.training import checkpoint, optim, ptq, run
from mobilenet_jax.training import workdir as workdir_lib
from mobilenet_jax.errors import ConfigError
from mobilenet_jax.ops import quantize
from mobilenet_jax.training.steps import (TrainState, config_models, create_train_state,
                                          eval_step, state_from, train_step)


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); the message says why."""


class Preempted(RuntimeError):
  """SIGTERM arrived; a checkpoint was saved and the run can be resumed."""


@dataclasses.dataclass
class Job:
  """What the parts of one run share, set up once before its first step."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  builder: Any  # the TFDS builder; None for synthetic data
  manager: ocp.CheckpointManager
  writer: metric_writers.MetricWriter
  num_steps: int


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


def resume_input(job: "Job", saved_step: Optional[int], meta: dict, start_step: int):
  """The training stream from `start_step` on, and its record for the meta.

  With the layout it was saved in, the stream is rebuilt as it was and its
  saved state restored (Grain: the position, in constant time); after a
  change of layout (devices, batch, workers) it starts at `start_step`'s
  position, which is the same data.
  """
  config, builder, mesh = job.config, job.builder, job.mesh
  layout = input_layout(config, mesh)
  saved = (meta or {}).get("input")
  if builder is not None and saved and saved["layout"] == layout:
    train_iter = train_iterator(config, builder, mesh, saved["first_step"], job.num_steps)
    with checkpoint.reading("input"):
      checkpoint.restore_input(job.manager, saved_step, train_iter)
    return train_iter, saved
  if saved:
    logging.info("Input layout changed from %s to %s: the data stream starts at "
                 "step %d's position.", saved["layout"], layout, start_step)
  record = {"layout": layout, "first_step": start_step}
  return train_iterator(config, builder, mesh, start_step, job.num_steps), record


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
  # A float run starts a QAT one (and back): activation ranges are only in one.
  stats, _ = checkpoint.merge_weights(state.batch_stats, saved.get("batch_stats", {}),
                                      config.init_from, only_one=quantize.is_range)
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

def per_step(values: list) -> np.ndarray:
  """One entry per step from calls' outputs (a scalar, or one per step of a
  call of several)."""
  return np.concatenate([np.ravel(v) for v in jax.device_get(values)] or [np.zeros(0)])


def first_bad_step(losses: List[jax.Array], first_step: int) -> Optional[int]:
  bad = np.flatnonzero(~np.isfinite(per_step(losses)))
  return first_step + int(bad[0]) if bad.size else None


class LogFile(py_logging.FileHandler):
  """workdir/train.log. A line that cannot be written (a full disk) is
  dropped without logging's traceback on stderr: the run goes on, and a
  checkpoint save that fails for the same reason says so in one line."""

  def handleError(self, record):
    del record


def add_log_file(workdir: str):
  """Also writes the log (metrics included) to workdir/train.log as text."""
  handler = LogFile(os.path.join(workdir, "train.log"))
  handler.setFormatter(py_logging.Formatter(
      f"%(asctime)s [p{jax.process_index()}] %(message)s"))
  logging.get_absl_logger().addHandler(handler)
  return handler


def flush(writer, workdir: str):
  """Flushes the TensorBoard events. A failure (a full disk) is a warning:
  the checkpoints, not the events, are what a resume needs."""
  try:
    writer.flush()
  except Exception as e:
    logging.warning("cannot write the TensorBoard events in %s: %s", workdir,
                    workdir_lib.describe(e))


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


# -------------------------------------------------------- init or resume ---

def init_or_restore(job: Job, eval_model, tx):
  """(state, meta, training stream) to start from: the newest checkpoint in
  the workdir that restores, else a new state (with config.init_from's
  weights, if given) at step 0."""
  config = job.config
  state = create_train_state(eval_model, config.image_size, tx, jax.random.key(config.seed),
                             ema=config.ema_decay > 0)
  if config.init_from and job.manager.latest_step() is None:
    state = warm_start(state, config, tx)
  state = parallel.replicate(state, job.mesh)
  restored = restore_newest(job, state)
  if restored is not None:
    return restored
  meta = run.new_meta(config)
  train_iter, meta["input"] = resume_input(job, None, meta, 0)
  return state, meta, train_iter


def restore_newest(job: Job, like: TrainState):
  """(state, meta, training stream) of the newest checkpoint that restores,
  or None where there is none.

  A newer step that cannot be read is renamed aside (kept, never deleted)
  with one warning. If no step restores, nothing is renamed and the run
  stops with one line listing what was tried: starting over would hide the
  damage, and the next run would say the same.
  """
  tried = []
  for step in sorted(job.manager.all_steps(), reverse=True):
    try:
      restored, error = restore_step(job, step, like), None
    except checkpoint.Unreadable as e:
      restored, error = None, e
    if workdir_lib.agree(error is None):  # every process resumes from one step
      for bad, why in tried:
        kept = checkpoint.set_aside(job.manager, bad)
        logging.warning("checkpoint step %d cannot be read (%s); kept as %s, "
                        "resuming from step %d.", bad, why, kept, step)
      logging.info("Resumed from step %d in %s.", int(restored[0].step), job.workdir)
      return restored
    tried.append((step, str(error) if error else "unreadable on another process"))
  if tried:
    raise workdir_lib.WorkdirError(
        f"no checkpoint in {job.manager.directory} can be read: "
        + "; ".join(f"step {s} ({why})" for s, why in tried)
        + ". Nothing was changed: restore the checkpoints from a copy, or move "
        "the directory aside to start the run over.")
  return None


def restore_step(job: Job, step: int, like: TrainState):
  """Checkpoint `step` as one unit: its meta (checked against the config),
  state and input position, each read in full (checkpoint.Unreadable if
  one cannot be)."""
  with checkpoint.reading("meta"):
    meta = checkpoint.restore_meta(job.manager, step)
  run.check_resumable(meta, job.config, job.workdir)
  with checkpoint.reading("state"):
    state = checkpoint.restore_state(job.manager, step, like)
  train_iter, meta["input"] = resume_input(job, step, meta, int(state.step))
  return state, meta, train_iter


# -------------------------------------------------------------- the loop ---

def call_size(step: int, per_call: int, num_steps: int, intervals) -> int:
  """How many steps the call that starts at `step` runs: `per_call` where those
  steps are one block of the grid step 1, 1 + per_call, ... that ends by
  num_steps with no multiple of an interval (a log, eval or save) before its
  last step; else 1. It depends on the step alone, so a resumed run makes the
  same calls as an uninterrupted one."""
  last = step + per_call - 1
  if (step - 1) % per_call or last > num_steps:
    return 1
  if any((last - 1) // n != (step - 1) // n for n in intervals):
    return 1
  return per_call


def train(job: Job, p_train, p_eval, schedule, state: TrainState, meta: dict,
          train_iter) -> TrainState:
  """Steps state.step + 1 .. num_steps, logging, evaluating and saving as the
  config says. On SIGTERM it saves after the current call and raises Preempted.
  p_train maps a call's step count (call_size) to its program."""
  config, manager, writer = job.config, job.manager, job.writer
  start_step, num_steps = int(state.step), job.num_steps
  per_call = max(p_train)
  intervals = (config.log_every_steps, config.eval_every_steps,
               config.checkpoint_every_steps)
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  sigterm = SigtermFlag()
  losses, checked_step, train_metrics = [], start_step, []
  t0 = time.time() - meta["train_time_s"]
  step = start_step
  try:
    while step < num_steps:
      n = call_size(step + 1, per_call, num_steps, intervals)
      state, metrics = p_train[n](state, parallel.next_batches(train_iter, n, job.mesh))
      step += n
      losses.append(metrics["loss"])
      train_metrics.append(metrics)
      report(step)
      last = step == num_steps
      log_now = step % config.log_every_steps == 0 or last
      eval_now = job.builder is not None and (step % config.eval_every_steps == 0 or last)
      save_now = step % config.checkpoint_every_steps == 0 or last
      if log_now or eval_now or save_now:  # a device sync: only when needed
        check_finite(job, losses, checked_step + 1)
        losses, checked_step = [], step
      if log_now:
        log_train_metrics(job, step, train_metrics, schedule)
        train_metrics = []
      if eval_now:
        with report.timed("eval"):
          result = evaluate(p_eval, state, config, job.builder, job.mesh)
        writer.write_scalars(step, result)
        meta["history"].append({"step": step, **result})
        logging.info("step %d eval: %s", step, ", ".join(
            f"{k} {v:.4f}" for k, v in result.items()))
      if sigterm.received and not save_now:  # decided here: it may come mid-evaluation
        check_finite(job, losses, checked_step + 1)
        losses, checked_step = [], step
        save_now = True
      if save_now:
        meta["train_time_s"] = time.time() - t0
        with report.timed("checkpoint"):
          checkpoint.save(manager, step, state, meta,
                          train_iter if job.builder is not None else None)
        if sigterm.received:  # after a save of this step, so the message is true
          raise Preempted(f"SIGTERM: saved step {step} in {job.workdir}; run the same "
                          "command again to resume.")
  finally:
    sigterm.restore()
    flush(writer, job.workdir)
  return state


def check_finite(job: Job, losses: List[jax.Array], first_step: int):
  bad = first_bad_step(losses, first_step)
  if bad is not None:
    raise TrainingError(
        f"loss is not finite at step {bad}; stopped. The last good checkpoint "
        f"(step {job.manager.latest_step()}) in {job.workdir} is intact; lower "
        "config.learning_rate or set config.grad_clip_norm.")


def log_train_metrics(job: Job, step: int, train_metrics: list, schedule):
  summary = jax.tree.map(lambda *x: float(np.mean(per_step(x))), *train_metrics)
  summary["learning_rate"] = float(schedule(step - 1))
  job.writer.write_scalars(step, {f"train_{k}": v for k, v in summary.items()})
  logging.info("step %d/%d: loss %.4f, accuracy %.3f, lr %.3g", step, job.num_steps,
               summary["loss"], summary["accuracy"], summary["learning_rate"])


def evaluate_only(job: Job, p_eval, state: TrainState, meta: dict):
  """config.eval_only: one evaluation of the restored (or init_from's)
  weights, recorded in the results; nothing is trained or saved."""
  step = int(state.step)
  meta["history"].append(
      {"step": step, **evaluate(p_eval, state, job.config, job.builder, job.mesh)})
  logging.info("eval only, step %d: %s", step, meta["history"][-1])
  flush(job.writer, job.workdir)


def write_results(job: Job, meta: dict, steps: int, quantized: Optional[dict] = None) -> dict:
  """results.json (process 0): the run's final metrics and history, and
  `quantized`, the post-training int8 evaluations (training/ptq.py)."""
  config = job.config
  results = {
      "config": config.to_dict(),
      "num_devices": jax.device_count(),
      "num_processes": jax.process_count(),
      "device_kind": jax.devices()[0].device_kind,
      "global_batch_size": train_batch_size(config),
      "steps": steps,
      "train_time_s": meta["train_time_s"],
      **madds.count(config.model, config.image_size),
      **(meta["history"][-1] if meta["history"] else {}),
      **(quantized or {}),
      "history": meta["history"],
  }
  results.pop("step", None)
  if jax.process_index() == 0:
    try:
      records.write_results(job.workdir, results)
    except OSError as e:
      partial = records.results_path(job.workdir) + ".tmp"
      if os.path.exists(partial):
        os.remove(partial)
      raise workdir_lib.WriteError(
          f"cannot write the results: {workdir_lib.describe(e)}. The checkpoints "
          f"in {job.workdir} are intact: free space (or fix the cause) and run "
          "the same command again to write them.") from None
  return results


# --------------------------------------------------------------- the run ---

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains config's model on config's data, evaluating; returns the results.

  The run owns `workdir` while it lasts: a second run there is refused, and
  a bad path is one line before anything is compiled. `config` is checked
  by the caller (defaults.validate: main, ablate and keras_digits do, once).
  """
  with workdir_lib.Owner(workdir):
    log_handler = add_log_file(workdir)
    try:
      return run_in_workdir(config, workdir)
    finally:
      logging.get_absl_logger().removeHandler(log_handler)
      log_handler.close()


def run_in_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """train_and_evaluate, once the workdir is this run's."""
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)

  # Model, optimizer, state.
  mesh = parallel.create_mesh()
  train_batch_size(config)  # both batch sizes checked before any work is done
  eval_batch_size(config)
  model, eval_model = config_models(config, parallel.platform(mesh))
  manager = checkpoint.create_manager(workdir, config.keep_checkpoints)

  # The data decides the epoch length, so it comes before the optimizer;
  # the iterator is only started once the resume step is known.
  builder = open_dataset(config)
  check_eval_only(config, builder, manager)
  per_epoch = steps_per_epoch(config, builder)
  num_steps = total_steps(config, per_epoch)
  tx, schedule = optim.create_optimizer(config, per_epoch, num_steps,
                                       frozen_bn=model.frozen_bn_paths())
  job = Job(config, workdir, mesh, builder, manager, writer, num_steps)
  state, meta, train_iter = init_or_restore(job, eval_model, tx)
  if int(state.step) == 0 and is_main:
    parameter_overview.log_parameter_overview(state.params)
    writer.write_hparams({k: v for k, v in flax.traverse_util.flatten_dict(
        config.to_dict(), sep=".").items() if isinstance(v, (int, float, str, bool))})

  p_eval = parallel.data_parallel(functools.partial(eval_step, model=eval_model), mesh)
  if config.eval_only:  # evaluation at the restored step is the whole run
    evaluate_only(job, p_eval, state, meta)
    return write_results(job, meta, int(state.step))
  step_fn = functools.partial(train_step, model=model, tx=tx,
                              label_smoothing=config.label_smoothing,
                              ema_decay=config.ema_decay)
  # Compiled at their first call: a run whose calls are all one step long
  # never compiles the other.
  p_train = {n: parallel.data_parallel(step_fn, mesh, donate_state=True, steps=n)
             for n in {1, parallel.steps_per_call(config.steps_per_call, mesh)}}
  state = train(job, p_train, p_eval, schedule, state, meta, train_iter)
  quantized = ptq.evaluate(job, state, evaluate) if config.ptq_eval else {}
  if quantized:
    logging.info("post-training int8: %s", ", ".join(
        f"{k} {v:.4f}" for k, v in quantized.items()))
  return write_results(job, meta, num_steps, quantized)
