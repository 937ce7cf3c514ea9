"""bottleneck_activation's linear and ReLU6 runs again from Keras's
initialiser (glorot_uniform) instead of Flax's lecun_normal.

Keras's own MobileNetV2 showed a smaller ReLU6 deficit than this project's
network, and the same deficit once started from this project's initial
weights: the initialisers, not the framework, made the difference. This is
the test from the other side: if that holds, this project's network started
at Keras's scale shows Keras's smaller gap.
"""

from experiments import sweeps


def get_sweep():
  base = sweeps.base_config()
  base.model.kernel_init = "glorot_uniform"
  return dict(
      name="bottleneck_activation_glorot",
      question="Does the linear vs ReLU6 bottleneck gap shrink when the network "
               "starts from Keras's initialiser (glorot_uniform)?",
      base=base,
      variants={act: {"model.bottleneck_activation": act} for act in ("linear", "relu6")},
      compare_to="linear", notes=sweeps.NOTES, seeds=sweeps.V2_SEEDS, plot="curves")
