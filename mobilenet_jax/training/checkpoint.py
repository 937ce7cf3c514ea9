"""Orbax checkpoints of the train state, with the run's metadata beside it.

Orbax writes each step to a temporary directory and renames it when complete,
so an interrupted save (SIGKILL, full disk) never leaves a checkpoint that
restores to garbage: the latest complete step is what `latest_meta` finds.
"""

import os
from typing import Any, Optional, Tuple

import flax
import grain
import jax
from etils import epath
import orbax.checkpoint as ocp

from mobilenet_jax.errors import ConfigError
from mobilenet_jax.training import run



def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict,
         input_iterator=None):
  """Saves and waits, so a checkpoint on disk is always complete. The
  training input's iterator (Grain), if given, is saved beside the state:
  its position, one small file per process."""
  items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
  if input_iterator is not None:
    items["input"] = grain.checkpoint.CheckpointSave(input_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)
  manager.wait_until_finished()


def restore_input(manager: ocp.CheckpointManager, step: int, input_iterator):
  """Sets `input_iterator` to the position saved at `step` (constant time)."""
  manager.restore(step, args=ocp.args.Composite(
      input=grain.checkpoint.CheckpointRestore(input_iterator)))


def latest_meta(manager: ocp.CheckpointManager) -> Tuple[Optional[int], Optional[dict]]:
  """(step, meta) of the latest checkpoint, or (None, None) if there is none."""
  step = manager.latest_step()
  if step is None:
    return None, None
  return step, manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))["meta"]


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state):
  """The train state of `step`, laid out as `abstract_state` (sharding included)."""
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))["state"]


def save_weights(workdir: str, variables: dict, config, **source):
  """Writes `variables` ({"params", "batch_stats"}) of `config`'s model as a
  step-0 checkpoint that --config.init_from and export read, with metadata
  that marks it as never to be resumed as a training run (`run.weights_meta`;
  `source` says where the weights came from)."""
  manager = create_manager(workdir, keep=1)
  if manager.latest_step() is not None:
    raise ConfigError(f"{workdir} already holds a checkpoint; choose a new --out "
                      "(nothing there was changed).")
  save(manager, 0, variables, run.weights_meta(config, **source))


def restore_on_one_device(workdir: str, step: Optional[int] = None) -> Tuple[dict, dict, int]:
  """(state as a dict of arrays on this host's first device, meta, step) of a
  run's checkpoint, whatever mesh or process count saved it: for export,
  warm starts and inspection. The latest step unless `step` is given."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  manager = ocp.CheckpointManager(directory)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise ConfigError(f"no checkpoint in {directory}; train first (or convert), "
                      "or check the directory.")
  tree = ocp.StandardCheckpointHandler().metadata(
      epath.Path(directory) / str(step) / "state")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"], step


def merge_weights(fresh: dict, saved: dict, source: str, keep_fresh: str = "classifier"):
  """`fresh` (a tree of arrays) with every leaf taken from `saved`.

  Leaves under `keep_fresh` whose shape differs stay fresh (a new classifier
  for fine-tuning on another class count); any other difference means
  another architecture and is a ConfigError naming the first one. Returns
  (merged, paths kept fresh).
  """
  flat_fresh = flax.traverse_util.flatten_dict(fresh, sep="/")
  flat_saved = flax.traverse_util.flatten_dict(saved, sep="/")
  missing = sorted(set(flat_fresh) ^ set(flat_saved))
  if missing:
    where = "here" if missing[0] in flat_fresh else f"in {source}"
    raise ConfigError(
        f"{source} holds weights of another architecture: {missing[0]} exists only "
        f"{where} ({len(missing)} such paths); use a config with its model.")
  merged, kept = {}, []
  for path, value in flat_fresh.items():
    old = flat_saved[path]
    if old.shape == value.shape:
      merged[path] = jax.numpy.asarray(old, value.dtype)
    elif path.startswith(keep_fresh):
      merged[path], kept = value, kept + [path]
    else:
      raise ConfigError(
          f"{source} holds weights of another architecture: {path} has shape "
          f"{tuple(old.shape)} there and {tuple(value.shape)} here (a different "
          "alpha, expansion or depth multiplier); use a config with its model.")
  return flax.traverse_util.unflatten_dict(merged, sep="/"), kept
