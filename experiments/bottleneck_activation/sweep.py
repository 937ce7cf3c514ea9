"""MobileNetV2 Figure 6a: linear vs ReLU6 vs ReLU after the projection."""

from experiments import sweeps


def get_sweep():
  return dict(
      name="bottleneck_activation",
      question="Does a linear bottleneck beat a non-linear one (MobileNetV2 Fig. 6a)?",
      base=sweeps.base_config(),
      variants={act: {"model.bottleneck_activation": act}
                for act in ("linear", "relu6", "relu")},
      compare_to="linear", notes=sweeps.NOTES, seeds=sweeps.V2_SEEDS, plot="curves")
