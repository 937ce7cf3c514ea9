"""Orbax checkpoints of the train state, with the run's metadata beside it.

Orbax writes each step to a temporary directory and renames it when complete,
so an interrupted save (SIGKILL, full disk) never leaves a checkpoint that
restores to garbage: the latest complete step is what `restore` finds.
"""

import os
from typing import Any, Optional, Tuple

import flax
import jax
from etils import epath
import orbax.checkpoint as ocp

from mobilenet_jax.errors import ConfigError

WEIGHTS = "weights"  # meta["kind"] of a checkpoint that holds only variables


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict):
  """Saves and waits, so a checkpoint on disk is always complete."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()


def describe_difference(saved: dict, wanted: dict) -> str:
  keys = sorted(set(saved) | set(wanted))
  return ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} here"
                   for k in keys if saved.get(k) != wanted.get(k))


def restore(manager: ocp.CheckpointManager, abstract_state,
            identity: dict) -> Tuple[Optional[Any], Optional[dict]]:
  """(state, meta) of the latest checkpoint, or (None, None) if there is none.

  `identity` names the model; a checkpoint of another model is refused.
  """
  step = manager.latest_step()
  if step is None:
    return None, None
  meta = manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))["meta"]
  workdir = os.path.dirname(str(manager.directory))
  if meta.get("kind") == WEIGHTS:
    raise ConfigError(
        f"{workdir} holds converted weights, not a training run; start from "
        f"them with --config.init_from={workdir} and a new --workdir.")
  if meta.get("identity") != identity:
    raise ConfigError(
        f"the workdir {workdir} holds a checkpoint "
        f"of a different model ({describe_difference(meta.get('identity', {}), identity)}); "
        "use a new --workdir, or delete its checkpoints/ to start over.")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"], meta


def save_weights(workdir: str, variables: dict, meta: dict):
  """Writes `variables` ({"params", "batch_stats"}) as a step-0 checkpoint
  that --config.init_from and export read, marked so that it is never
  mistaken for a training run to resume."""
  manager = create_manager(workdir, keep=1)
  if manager.latest_step() is not None:
    raise ConfigError(f"{workdir} already holds a checkpoint; choose a new --out "
                      "(nothing there was changed).")
  save(manager, 0, variables, dict(meta, kind=WEIGHTS))


def restore_with_meta(workdir: str, step: Optional[int] = None) -> Tuple[dict, dict, int]:
  """(state as a dict of arrays on this host's first device, meta, step) of a
  run's checkpoint, whatever mesh or process count saved it: for export,
  conversion and inspection. The latest step unless `step` is given."""
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


def restore_on_host(workdir: str, step: Optional[int] = None) -> Tuple[dict, int]:
  """(state, step): restore_with_meta without the meta."""
  state, _, step = restore_with_meta(workdir, step)
  return state, step


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
