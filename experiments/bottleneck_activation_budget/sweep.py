"""bottleneck_activation's linear and ReLU6 runs with twice the budget.

ReLU6 bottlenecks learn far slower than linear ones, and some of their runs
were still moving at the end of the default's 60 epochs. If ReLU6 only
learns slower, twice the budget (120 epochs, the cosine schedule stretched
over it) closes the gap; if it ends worse, the gap stays. The 60-epoch runs
are bottleneck_activation's (the same configs). Five seeds, as for the other
MobileNetV2 sweeps: at three the 120-epoch gap was not separable from zero.
"""

from experiments import sweeps


def get_sweep():
  return dict(
      name="bottleneck_activation_budget",
      question="Does the ReLU6 bottleneck's deficit close with twice the training "
               "budget (does it learn slower, or end worse)?",
      base=sweeps.base_config(),
      **sweeps.by_budget("model.bottleneck_activation", ("linear", "relu6")),
      notes=sweeps.NOTES, seeds=sweeps.V2_SEEDS)
