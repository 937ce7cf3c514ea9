"""MobileNet V1 Table 7: the resolution multiplier rho.

The paper's 224/192/160/128 are rho = 1, 6/7, 5/7, 4/7; here of 56 px (the
8x8 digits upsampled): 56/48/40/32, the smallest at the networks' 32 px minimum.
"""

from experiments import sweeps

SIZES = {"rho_1": 56, "rho_6/7": 48, "rho_5/7": 40, "rho_4/7": 32}


def get_sweep():
  return dict(
      name="resolution_multiplier",
      question="How does accuracy trade against multiply-adds as the input "
               "resolution shrinks (MobileNet V1 Table 7, Fig. 5)?",
      base=sweeps.base_config(),
      variants={name.replace("/", "_"): {"image_size": size}
                for name, size in SIZES.items()},
      notes=sweeps.NOTES, seeds=sweeps.SEEDS, plot="madds")
