"""MobileNet V1 on ImageNet with the paper's recipe; variant "alpha_size".

  --config configs/mobilenet_v1.py            # 1.0 @ 224
  --config configs/mobilenet_v1.py:0.5_160    # alpha 0.5 at 160 px (rho 0.71)
"""

from configs import default


def get_config(arg="1.0_224"):
  config = default.get_config()
  config.model = default.model_v1()
  default.imagenet_recipe(config)
  alpha, size = default.parse_variant(arg)
  config.model.alpha = alpha
  config.image_size = size
  return config
