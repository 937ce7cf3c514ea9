"""shortcut_placement's network without shortcuts, with twice the budget.

Without shortcuts MobileNetV2 learns far slower, and at the default's 60
epochs it ends 11.6 points lower. As for ReLU6 (bottleneck_activation_budget),
twice the budget tells "learns slower" (a gap that closes) from "ends worse"
(one that stays). The 60-epoch runs are shortcut_placement's; the 120-epoch
runs with shortcuts are bottleneck_activation_budget's linear ones (the same
configs).
"""

from experiments import sweeps


def get_sweep():
  return dict(
      name="shortcut_placement_budget",
      question="Does the cost of removing the shortcuts close with twice the "
               "training budget (does it learn slower, or end worse)?",
      base=sweeps.base_config(),
      **sweeps.by_budget("model.shortcut", ("bottleneck", "none")),
      notes=sweeps.NOTES, seeds=sweeps.V2_SEEDS)
