"""MobileNet V1 Table 5: a thinner network vs a shallower one of similar cost."""

from experiments import sweeps


def get_sweep():
  return dict(
      name="thin_vs_shallow",
      question="At similar cost, is it better to make MobileNet thinner (alpha "
               "0.75) or shallower (the 5 14x14x512 layers removed) (V1 Table 5)?",
      base=sweeps.base_config("mobilenet_v1"),
      variants={"0.75_mobilenet": {"model.alpha": 0.75},
                "shallow_mobilenet": {"model.shallow": True}},
      notes=sweeps.NOTES, seeds=sweeps.SEEDS, plot="madds")
