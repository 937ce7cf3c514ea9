"""Device-axis typing that hand-written VJPs and FFI calls need inside shard_map."""

import jax
from jax import lax


def varying_axes(x) -> frozenset:
  """The shard_map mesh axes `x` varies over. JAX 0.8 moved this from
  `aval.vma` (0.7, Colab's runtime) to `aval.manual_axis_type.varying`."""
  aval = jax.typeof(x)
  typing = getattr(aval, "manual_axis_type", None)
  return frozenset(typing.varying if typing is not None else aval.vma)


def _to_varying(value, axes: tuple):
  if hasattr(lax, "pcast"):  # JAX >= 0.8
    return lax.pcast(value, axes, to="varying")
  return lax.pvary(value, axes)


def vary_like(value, like):
  """Inside shard_map, marks `value` as varying over the devices `like` varies over.

  jnp ops do this implicitly. A custom VJP or FFI call needs it done: a replicated
  parameter entering it must have the activations' type so that its cotangent can
  (the cast's transpose then sums the gradient over devices, as for any
  parameter), and FFI results are typed as replicated until cast.
  """
  axes = varying_axes(like) - varying_axes(value)
  return _to_varying(value, tuple(sorted(axes))) if axes else value
