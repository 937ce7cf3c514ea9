"""bottleneck_activation's linear and ReLU6 runs again with the reference ops:
XLA's grouped convolution for the depthwise layers and flax.linen.BatchNorm
followed by the activation, instead of this project's native kernel and fused
batch norm. A gap that survives the change of implementation is not an
artifact of the fast ops.
"""

from experiments import sweeps


def get_sweep():
  base = sweeps.base_config()
  base.depthwise_impl, base.batchnorm_impl = "lax", "flax"
  return dict(
      name="bottleneck_activation_reference",
      question="Does the linear vs ReLU6 bottleneck gap hold with the reference "
               "ops (XLA's depthwise convolution, flax.linen.BatchNorm)?",
      base=base,
      variants={act: {"model.bottleneck_activation": act} for act in ("linear", "relu6")},
      compare_to="linear", notes=sweeps.NOTES, seeds=sweeps.V2_SEEDS, plot="curves")
