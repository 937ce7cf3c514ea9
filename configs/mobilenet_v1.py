"""MobileNet V1 on ImageNet with the paper's recipe; variant "alpha_size".

  --config configs/mobilenet_v1.py            # 1.0 @ 224
  --config configs/mobilenet_v1.py:0.5_160    # alpha 0.5 at 160 px (rho 0.71)

What changes from configs/default.py: the model is MobileNet V1 with every knob
at the paper's value (defaults.model_config), trained with the TF-slim
ImageNet recipe (defaults.imagenet_recipe), at the variant's alpha and size.
"""

from mobilenet_jax import defaults


def get_config(arg="1.0_224"):
  config = defaults.get_config()
  config.model = defaults.model_config("mobilenet_v1")
  defaults.imagenet_recipe(config)
  config.model.alpha, config.image_size = defaults.parse_variant(arg)
  return config
