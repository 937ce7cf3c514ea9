"""Device-axis typing that hand-written VJPs and FFI calls need inside shard_map."""

import jax
from jax import lax


def vary_like(value, like):
  """Inside shard_map, marks `value` as varying over the devices `like` varies over.

  jnp ops do this implicitly. A custom VJP or FFI call needs it done: a replicated
  parameter entering it must have the activations' type so that its cotangent can
  (the cast's transpose then sums the gradient over devices, as for any
  parameter), and FFI results are typed as replicated until cast.
  """
  axes = jax.typeof(like).manual_axis_type.varying - jax.typeof(value).manual_axis_type.varying
  return lax.pcast(value, tuple(sorted(axes)), to="varying") if axes else value
