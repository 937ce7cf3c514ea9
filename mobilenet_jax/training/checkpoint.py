"""Orbax checkpoints of the train state, with the run's metadata beside it.

Orbax writes each step to a temporary directory and renames it when complete,
so an interrupted save (SIGKILL, full disk) never leaves a checkpoint that
restores to garbage: the latest complete step is what `latest_meta` finds.
A failed save is one WriteError; a step that cannot be read is renamed aside
(`set_aside`), never deleted.
"""

import contextlib
import glob
import logging as py_logging
import os
import shutil
import sys
import traceback
from typing import Optional, Tuple

import flax
import grain
import jax
from etils import epath
import orbax.checkpoint as ocp

from mobilenet_jax.errors import ConfigError
from mobilenet_jax.training import run
from mobilenet_jax.training.workdir import WriteError, describe

DAMAGED = ".damaged"  # a suffix orbax's step names (digits only) never match


class Unreadable(Exception):
  """A part of a checkpoint cannot be read; the message says which and why."""


@contextlib.contextmanager
def reading(part: str):
  """Turns a failure to read `part` ("state", "meta", "input") of a checkpoint
  into Unreadable. A ConfigError (the checkpoint is of another model) is not
  damage and passes through."""
  try:
    yield
  except ConfigError:
    raise
  except Exception as e:
    raise Unreadable(f"{part}: {describe(e)}") from e


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """Saves are synchronous (`save` waits for them anyway): a failed write is
  then one exception here, not tracebacks from orbax's background threads.
  Temporary directories of saves that never finished are removed."""
  quiet_orbax_leftovers()
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=False,
          cleanup_tmp_directories=True))


LEFT_BEHIND = ("exception was never retrieved", "Task was destroyed but it is pending")


class OrbaxTasksLeftBehind(py_logging.Filter):
  """Drops asyncio's reports of orbax's tasks that a failed save or restore
  left behind ("exception was never retrieved", "Task was destroyed but it is
  pending"), printed at exit."""

  def filter(self, record) -> bool:
    message = record.getMessage()
    if not any(kind in message for kind in LEFT_BEHIND):
      return True
    error = record.exc_info[1] if record.exc_info else None
    frames = traceback.extract_tb(error.__traceback__) if error is not None else []
    return not ("/orbax/" in message
                or any("/orbax/" in frame.filename for frame in frames))


def is_orbax_leftover(unraisable) -> bool:
  """What orbax's abandoned work raises where no one can catch it:
  - a write of a failed save reporting back to the closed event loop
    ("Event loop is closed", from TensorStore's threads);
  - a read of a failed restore, closed at exit while still waiting
    (orbax turns the GeneratorExit into "Encountered error while reading")."""
  error, tb, where = unraisable.exc_value, unraisable.exc_traceback, unraisable.object
  if (unraisable.exc_type is RuntimeError and str(error) == "Event loop is closed"
      and tb is not None and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"):
    return True
  code = getattr(where, "cr_code", None)  # a coroutine's
  return (code is not None and "/orbax/" in code.co_filename
          and isinstance(getattr(error, "__cause__", None), GeneratorExit))


def quiet_orbax_leftovers():
  """Quiets what orbax's other reads and writes print once one has failed.

  Orbax's event loop ends with the first error (a full disk, a damaged
  array) while TensorStore's other reads and writes are still going. They
  then report through sys.unraisablehook and asyncio's log, at once or at
  exit: dozens of tracebacks that bury the one line the failure gets
  (`save`'s WriteError, the loop's "cannot be read"). Exactly those are
  dropped (`is_orbax_leftover`, `OrbaxTasksLeftBehind`); anything else
  passes as before."""
  previous = sys.unraisablehook
  if getattr(previous, "quiets_orbax_leftovers", False):
    return

  def hook(unraisable):
    if not is_orbax_leftover(unraisable):
      previous(unraisable)

  hook.quiets_orbax_leftovers = True
  sys.unraisablehook = hook
  py_logging.getLogger("asyncio").addFilter(OrbaxTasksLeftBehind())


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict,
         input_iterator=None):
  """Saves and waits, so a checkpoint on disk is always complete. The
  training input's iterator (Grain), if given, is saved beside the state:
  its position, one small file per process."""
  items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
  if input_iterator is not None:
    items["input"] = grain.checkpoint.CheckpointSave(input_iterator)
  try:
    manager.save(step, args=ocp.args.Composite(**items), force=True)
    manager.wait_until_finished()
  except Exception as e:  # a full disk, a lost mount: whatever the writer raised
    remove_unfinished(manager, step)
    latest = manager.latest_step()
    raise WriteError(
        f"cannot save checkpoint step {step}: {describe(e, str(manager.directory))}. "
        + (f"Step {latest}, the last complete checkpoint, is intact; free space "
           "(or fix the cause) and run the same command again to resume."
           if latest is not None else "No checkpoint was saved before; free "
           "space (or fix the cause) and run the same command again.")) from None


def remove_unfinished(manager: ocp.CheckpointManager, step: int):
  """Removes what a failed save of `step` left in orbax's temporary directory
  (never a complete step): it frees the space and no resume reads it."""
  if jax.process_index() != 0:
    return
  for path in glob.glob(os.path.join(str(manager.directory),
                                     f"{step}.orbax-checkpoint-tmp*")):
    shutil.rmtree(path, ignore_errors=True)


def restore_input(manager: ocp.CheckpointManager, step: int, input_iterator):
  """Sets `input_iterator` to the position saved at `step` (constant time)."""
  manager.restore(step, args=ocp.args.Composite(
      input=grain.checkpoint.CheckpointRestore(input_iterator)))


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))["meta"]


def set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Renames checkpoint `step` to `<step>.damaged` (or .damaged.2, ...),
  which orbax does not take for a step, and returns the new path. Process 0
  renames; every process then forgets the step."""
  source = os.path.join(str(manager.directory), str(step))
  target, n = source + DAMAGED, 1
  while os.path.exists(target):
    n += 1
    target = f"{source}{DAMAGED}.{n}"
  sync = lambda name: None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    sync = multihost_utils.sync_global_devices
  sync(f"set_aside_{step}_named")  # every process has looked before the rename
  if jax.process_index() == 0:
    os.rename(source, target)
  sync(f"set_aside_{step}_renamed")
  manager.reload()
  return target


def latest_meta(manager: ocp.CheckpointManager) -> Tuple[Optional[int], Optional[dict]]:
  """(step, meta) of the latest checkpoint, or (None, None) if there is none."""
  step = manager.latest_step()
  if step is None:
    return None, None
  return step, restore_meta(manager, step)


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


def merge_weights(fresh: dict, saved: dict, source: str, keep_fresh: str = "classifier",
                  only_one=lambda path: False):
  """`fresh` (a tree of arrays) with every leaf taken from `saved`.

  Leaves under `keep_fresh` whose shape differs stay fresh (a new classifier
  for fine-tuning on another class count), as do paths `only_one(path)`
  allows in just one of the trees (saved-only ones are dropped); any other
  difference means another architecture and is a ConfigError naming the
  first one. Returns (merged, paths kept fresh).
  """
  flat_fresh = flax.traverse_util.flatten_dict(fresh, sep="/")
  flat_saved = flax.traverse_util.flatten_dict(saved, sep="/")
  allowed = {p for p in set(flat_fresh) ^ set(flat_saved) if only_one(p)}
  flat_saved = {p: v for p, v in flat_saved.items() if p not in allowed}
  missing = sorted((set(flat_fresh) ^ set(flat_saved)) - allowed)
  if missing:
    where = "here" if missing[0] in flat_fresh else f"in {source}"
    raise ConfigError(
        f"{source} holds weights of another architecture: {missing[0]} exists only "
        f"{where} ({len(missing)} such paths); use a config with its model.")
  merged, kept = {}, []
  for path, value in flat_fresh.items():
    if path in allowed:
      merged[path], kept = value, kept + [path]
      continue
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
