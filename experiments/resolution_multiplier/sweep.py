"""MobileNet V1 Table 7: the resolution multiplier rho.

The paper's 224/192/160/128 are rho = 1, 6/7, 5/7, 4/7; here of 64 px (the
8x8 digits upsampled), the smallest of which stays above the 32 px minimum.
"""

from experiments import sweeps

SIZES = {"rho_1": 64, "rho_6/7": 56, "rho_5/7": 48, "rho_4/7": 40}


def get_sweep():
  return dict(
      name="resolution_multiplier",
      question="How does accuracy trade against multiply-adds as the input "
               "resolution shrinks (MobileNet V1 Table 7, Fig. 5)?",
      base=sweeps.base_config(),
      variants={name.replace("/", "_"): {"image_size": size}
                for name, size in SIZES.items()},
      seeds=[0, 1, 2], plot="madds")
