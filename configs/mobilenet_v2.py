"""MobileNetV2 on ImageNet with the paper's recipe; variant "alpha_size".

  --config configs/mobilenet_v2.py            # 1.0 @ 224
  --config configs/mobilenet_v2.py:0.35_160   # alpha 0.35 at 160 px (rho 0.71)

configs/imagenet.py with MobileNetV2: the same as --config configs/imagenet.py:v2_ALPHA_SIZE.
"""

import os
import runpy

imagenet = runpy.run_path(os.path.join(os.path.dirname(__file__), "imagenet.py"))


def get_config(arg="1.0_224"):
  return imagenet["recipe"]("mobilenet_v2", arg)
