"""MobileNetV2 Figure 6b: shortcuts between bottlenecks, between expansions, none."""

from experiments import sweeps


def get_sweep():
  return dict(
      name="shortcut_placement",
      question="Where should the residual shortcut go (MobileNetV2 Fig. 6b)?",
      base=sweeps.base_config(),
      variants={s: {"model.shortcut": s} for s in ("bottleneck", "expansion", "none")},
      compare_to="bottleneck", notes=sweeps.NOTES, seeds=sweeps.V2_SEEDS, plot="curves")
