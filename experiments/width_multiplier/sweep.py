"""MobileNet V1 Table 6 (and its V2 counterpart): the width multiplier alpha."""

from experiments import sweeps


def get_sweep():
  variants = {f"{tag}_{alpha}": {"model": sweeps.model(name, alpha=alpha)}
              for tag, name in (("v1", "mobilenet_v1"), ("v2", "mobilenet_v2"))
              for alpha in (1.0, 0.75, 0.5, 0.25)}
  return dict(
      name="width_multiplier",
      question="How does accuracy trade against multiply-adds as alpha shrinks "
               "(MobileNet V1 Table 6, Fig. 4)?",
      base=sweeps.base_config(), variants=variants, notes=sweeps.NOTES, seeds=sweeps.SEEDS, plot="madds")
