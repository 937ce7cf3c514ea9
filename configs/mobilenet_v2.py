"""MobileNetV2 on ImageNet with the paper's recipe; variant "alpha_size".

  --config configs/mobilenet_v2.py            # 1.0 @ 224
  --config configs/mobilenet_v2.py:0.35_160   # alpha 0.35 at 160 px (rho 0.71)
"""

from configs import default


def get_config(arg="1.0_224"):
  return default.imagenet_config(default.model_v2(), arg)
