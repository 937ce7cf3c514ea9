"""MobileNet V1 Table 4: depthwise separable vs full convolutions."""

from experiments import sweeps


def get_sweep():
  return dict(
      name="separable_vs_full",
      question="What do depthwise separable convolutions cost in accuracy, and "
               "save in multiply-adds, against full convolutions (V1 Table 4)?",
      base=sweeps.base_config("mobilenet_v1"),
      variants={kind: {"model.alpha": 0.5, "model.conv_type": kind}
                for kind in ("separable", "full")},
      notes=sweeps.NOTES, seeds=sweeps.SEEDS, plot="madds")
