"""Four fake CPU devices for every test (set before JAX is imported)."""

import os

import tempfile

# Not --xla_backend_optimization_level=0: it compiles a third faster, but changes
# float32 rounding enough (jax 0.7.2) that the fused and flax batch norms' gradients
# differ by 2e-3; the tests compile what users run.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4")
# One persistent compilation cache for the session's workers and the commands
# they start: the CLI tests compile the same small configs again and again.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "mobilenet_jax_test_jax_cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests run on the CPU. With libtpu and the CUDA plugin installed (the test
# extra: tests/aot_test.py compiles for TPUs and GPUs), JAX would otherwise try
# to start those backends in every process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import sys

# Tests load configs the way main does from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


import pytest

SMALL_CONFIG = """
from mobilenet_jax import defaults

def get_config():
  config = defaults.get_config()
  config.model.blocks = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2))
  config.depthwise_impl = "lax"  # compiles faster; the loop is what is tested
  config.per_device_batch_size = 4
  config.eval_per_device_batch_size = 32
  return config
"""


@pytest.fixture(scope="session")
def small_config_file(tmp_path_factory):
  """configs/default.py with a three-row block table: the same loop, fast to compile."""
  path = tmp_path_factory.mktemp("configs") / "small.py"
  path.write_text(SMALL_CONFIG)
  return str(path)


@pytest.fixture
def data_parallel_grads():
  """grads(x, kernel) run as in the train step's shard_map (x split over the data
  axis, kernel replicated), for the kernels' tests of gradients under it."""
  import jax
  from jax.sharding import PartitionSpec as P
  from mobilenet_jax import parallel

  def run(grads, x, kernel):
    mesh = parallel.create_mesh()
    assert mesh.size > 1  # the fake devices above
    sharded = jax.jit(jax.shard_map(grads, mesh=mesh, in_specs=(P(parallel.DATA), P()),
                                    out_specs=(P(parallel.DATA), P())))
    return sharded(parallel.shard_batch({"x": x}, mesh)["x"], parallel.replicate(kernel, mesh))
  return run
