"""Data parallelism: pmap's semantics written as jit(shard_map) over a mesh.

One mesh axis, "data", spans every device of every process. A step function
written for one device (its shard of the batch, replicated state) becomes a
global step with `data_parallel`; inside it, `lax.pmean(x, DATA)` averages
over devices.
"""

from typing import Callable, Dict

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mobilenet_jax.errors import ConfigError

DATA = "data"


def initialize_distributed(coordinator_address=None, num_processes=None,
                           process_id=None, auto: bool = False):
  """Joins a multi-process job before any other JAX call.

  Explicit arguments, or with `auto` JAX's own detection (Cloud TPU, SLURM,
  Open MPI). One process per host; the mesh then spans all their devices.
  """
  if coordinator_address or num_processes:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif auto:
    jax.distributed.initialize()


def create_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D "data" mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), (DATA,), devices=devices)


def batch_sizes(global_batch: int, per_device: int, what: str = "batch_size"):
  """(global, per-device) batch sizes: a global size if > 0, else per-device x devices.

  A global size must split evenly over all devices (and so over processes).
  """
  n = jax.device_count()
  if global_batch <= 0:
    return per_device * n, per_device
  if global_batch % n:
    raise ConfigError(
        f"{what}={global_batch} does not divide over {n} devices "
        f"({jax.process_count()} processes); use a multiple of {n}, or set "
        f"{what}=-1 and per_device_{what} instead.")
  return global_batch, global_batch // n


def local_batch_size(global_batch: int) -> int:
  """This process's share of a global batch."""
  return global_batch // jax.process_count()


def shard_batch(batch: Dict[str, np.ndarray], mesh) -> Dict[str, jax.Array]:
  """This process's numpy batch -> global arrays split over the "data" axis."""
  sharding = NamedSharding(mesh, P(DATA))
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def replicate(tree, mesh):
  """Puts a pytree on every device (the state all replicas share)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def data_parallel(step: Callable, mesh, donate_state: bool = False) -> Callable:
  """jit(shard_map(step)) for step(state, batch) -> (state, metrics).

  `state` is replicated, `batch` split over DATA; the outputs are replicated,
  so `step` must make them equal on every device (pmean / psum). shard_map
  tracks which values vary over devices, so the gradient of a replicated
  parameter arrives already summed over devices (and sync BN's collectives
  are transposed correctly).
  """
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA)),
                          out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,) if donate_state else ())
