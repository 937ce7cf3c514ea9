"""Linear vs ReLU6 bottlenecks across widths: does the linear bottleneck's
advantage grow as the bottleneck gets thinner?

MobileNetV2's argument for linear bottlenecks (Section 3.2, Fig. 1): a ReLU in
a low-dimensional space destroys information, the more so the fewer channels
it has. At alpha 0.35 the first bottlenecks have 8 channels; at 1.0, 16 and 24.
"""

from experiments import sweeps

ALPHAS = (0.35, 0.5, 1.0)
ACTIVATIONS = ("linear", "relu6")


def get_sweep():
  return dict(
      name="width_activation",
      question="Does the linear bottleneck's advantage over ReLU6 grow as the "
               "network gets thinner (MobileNetV2 Sec. 3.2, Fig. 1)?",
      base=sweeps.base_config(),
      variants={f"{act}_alpha_{alpha}": {"model.alpha": alpha,
                                         "model.bottleneck_activation": act}
                for alpha in ALPHAS for act in ACTIVATIONS},
      plot="gap", gap=dict(x="model.alpha", split="model.bottleneck_activation",
                           minus=["linear", "relu6"], xlabel="width multiplier alpha"),
      notes=sweeps.NOTES, seeds=sweeps.V2_SEEDS)
