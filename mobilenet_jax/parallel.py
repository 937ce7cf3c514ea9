"""Data parallelism: pmap's semantics written as jit(shard_map) over a mesh.

One mesh axis, "data", spans every device of every process. A step function
written for one device (its shard of the batch, replicated state) becomes a
global step with `data_parallel`; inside it, `lax.pmean(x, DATA)` averages
over devices.
"""

import functools
import socket
import time
from typing import Callable, Dict

import jax
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from mobilenet_jax.errors import ConfigError

DATA = "data"


def check_launch(coordinator_address, num_processes, process_id):
  """The explicit launch arguments, checked before JAX sees them (JAX aborts
  the process on most mistakes instead of raising)."""
  if not coordinator_address or num_processes is None or process_id is None:
    raise ConfigError(
        "a multi-process launch needs all of --coordinator_address, "
        "--num_processes and --process_id (or --distributed alone where JAX "
        "detects the cluster: Cloud TPU, SLURM, Open MPI).")
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit():
    raise ConfigError(f"--coordinator_address={coordinator_address!r} is not "
                      "host:port, e.g. 10.0.0.2:1234.")
  if num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes}; it must be at least 1.")
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id} is out of range for "
                      f"--num_processes={num_processes}; use 0 to "
                      f"{num_processes - 1}, one per process.")
  return host.strip("[]"), int(port)


def wait_for_coordinator(host: str, port: int, timeout_s: float):
  """Waits until process 0's coordinator accepts connections, or fails."""
  deadline, error = time.time() + timeout_s, None
  while time.time() < deadline:
    try:
      with socket.create_connection((host, port), timeout=2):
        return
    except OSError as e:
      error = e
      time.sleep(0.5)
  raise ConfigError(
      f"cannot reach the coordinator at {host}:{port} within {timeout_s:.0f} s "
      f"({error}); start process 0 of the job, and check the address and that "
      "the port is open between the hosts.")


def check_can_listen(port: int):
  """Process 0 serves the coordinator on `port`: it must be free."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(("", port))
    except OSError as e:
      raise ConfigError(f"process 0 cannot serve the coordinator on port {port} "
                        f"({e}); choose a free port in --coordinator_address.")


def initialize_distributed(coordinator_address=None, num_processes=None,
                           process_id=None, auto: bool = False,
                           timeout_s: int = 300, heartbeat_timeout_s: int = 100):
  """Joins a multi-process job before any other JAX call.

  Explicit arguments, or with `auto` JAX's own detection (Cloud TPU, SLURM,
  Open MPI). One process per host; the mesh then spans all their devices.
  If a process dies, the others stop: at once with an error if they wait on
  it in a collective, else when its heartbeats have been missing for
  `heartbeat_timeout_s` (JAX then terminates them, saying another task died).
  """
  timeouts = dict(initialization_timeout=timeout_s,
                  heartbeat_timeout_seconds=heartbeat_timeout_s)
  if coordinator_address or num_processes is not None or process_id is not None:
    host, port = check_launch(coordinator_address, num_processes, process_id)
    if process_id == 0:
      check_can_listen(port)
    else:
      wait_for_coordinator(host, port, timeout_s)
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               **timeouts)
  elif auto:
    jax.distributed.initialize(**timeouts)


def create_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D "data" mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), (DATA,), devices=devices)


def platform(mesh) -> str:
  """The platform ("cpu", "gpu", "tpu") of the mesh's devices: what a program
  for this mesh is compiled for, whatever the host process runs on."""
  return mesh.devices.flat[0].platform


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


def local_shards(mesh) -> list:
  """Positions in the mesh of this process's devices: the data shards it reads."""
  return [i for i, d in enumerate(mesh.devices.flat)
          if d.process_index == jax.process_index()]


def shard_batch(batch: Dict[str, np.ndarray], mesh, stacked: bool = False
                ) -> Dict[str, jax.Array]:
  """This process's numpy batch -> global arrays split over the "data" axis;
  `stacked`: several steps' batches on a leading axis, each split so."""
  sharding = NamedSharding(mesh, batch_spec(stacked))
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def next_batches(batches, n: int, mesh) -> Dict[str, jax.Array]:
  """The next n of this process's numpy batches on the mesh; for n > 1 stacked
  on a leading axis (one call of data_parallel(..., steps=n))."""
  if n == 1:
    return shard_batch(next(batches), mesh)
  stacked = jax.tree.map(lambda *x: np.stack(x), *[next(batches) for _ in range(n)])
  return shard_batch(stacked, mesh, stacked=True)


def replicate(tree, mesh):
  """Puts a pytree, equal on every process, on every device of the mesh (the
  state all replicas share). Works across processes, unlike device_put."""
  sharding = NamedSharding(mesh, P())

  def put(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def batch_spec(stacked: bool) -> P:
  return P(None, DATA) if stacked else P(DATA)


# Train steps per compiled call on CPU where the config leaves it to the
# platform: one call allocates XLA's buffer for a step's temporaries (1.2 GB for
# MobileNetV2 at batch 32) once, and the kernel zeroes fresh pages for it at
# every call (docs/performance.md, "Several steps per call").
CPU_STEPS_PER_CALL = 4


def steps_per_call(requested: int, mesh) -> int:
  """`requested` (config.steps_per_call), or for 0 the platform's choice:
  CPU_STEPS_PER_CALL on CPU; 1 on GPU and TPU, whose allocators keep their
  memory from step to step."""
  if requested:
    return requested
  return CPU_STEPS_PER_CALL if platform(mesh) == "cpu" else 1


def data_parallel(step: Callable, mesh, donate_state: bool = False,
                  steps: int = 1) -> Callable:
  """jit(shard_map(step)) for step(state, batch) -> outputs (any pytree).

  `state` is replicated, `batch` split over DATA; the outputs are replicated,
  so `step` must make them equal on every device (pmean / psum). shard_map
  tracks which values vary over devices, so the gradient of a replicated
  parameter arrives already summed over devices (and sync BN's collectives
  are transposed correctly). With `steps` > 1, `step` returns (state, outputs)
  and one call runs that many steps (lax.scan) over batches stacked on a
  leading axis (shard_batch(..., stacked=True)): the final state, and each
  step's outputs stacked the same way.
  """
  if steps > 1:
    step = functools.partial(lax.scan, step)  # scan(step, state, batches)
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), batch_spec(steps > 1)),
                          out_specs=P())
  return jax.jit(sharded, donate_argnums=(0,) if donate_state else ())
