"""Orbax checkpoints of the train state, with the run's metadata beside it.

Orbax writes each step to a temporary directory and renames it when complete,
so an interrupted save (SIGKILL, full disk) never leaves a checkpoint that
restores to garbage: the latest complete step is what `restore` finds.
"""

import os
from typing import Any, Optional, Tuple

import jax
from etils import epath
import orbax.checkpoint as ocp

from mobilenet_jax.errors import ConfigError


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
  if meta.get("identity") != identity:
    raise ConfigError(
        f"the workdir {os.path.dirname(str(manager.directory))} holds a checkpoint "
        f"of a different model ({describe_difference(meta.get('identity', {}), identity)}); "
        "use a new --workdir, or delete its checkpoints/ to start over.")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored["state"], meta


def restore_on_host(workdir: str, step: Optional[int] = None) -> Tuple[dict, int]:
  """(state as a dict of arrays on this host's first device, step) of a run's
  checkpoint, whatever mesh or process count saved it: for export,
  conversion and inspection. The latest step unless `step` is given."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  manager = ocp.CheckpointManager(directory)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise ConfigError(f"no checkpoint in {directory}; train first, or check --workdir.")
  tree = ocp.StandardCheckpointHandler().metadata(
      epath.Path(directory) / str(step) / "state")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))
  return restored["state"], step
