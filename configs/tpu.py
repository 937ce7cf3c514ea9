"""The papers' ImageNet recipe on Cloud TPUs; variant "v{1,2}_alpha_size".

  --config configs/tpu.py                 # MobileNetV2 1.0 @ 224, on any v5e/v6e slice
  --config configs/tpu.py:v1_0.5_160      # MobileNetV1 0.5 @ 160

What changes from configs/imagenet.py (the papers' recipe, which mobilenet_v1.py and
mobilenet_v2.py are too), each chosen from the
programs compiled for TPUs (`python -m mobilenet_jax.tools.aot`; the figures and why are in
docs/performance.md, "TPUs and GPUs without one"):
- 128 images per chip instead of the papers' 96 per worker. A TPU lays the batch on
  its 128-wide tiles; 96 fills three quarters of each. The compiler's estimate for the
  V2 1.0 @ 224 step on a v5e chip is 3,944 images/s at 128 against 2,342 at 96.
- The learning rate scaled by 128/96 with it, as the recipe scales it with the
  global batch: on 16 chips (a v5e-16) the global batch is 2,048 where the V2 paper's
  16 workers had 1,536.
- bfloat16 compute: 31% fewer HBM bytes per image, 1.45x the compiler's estimate
  (V2 at 96 on a v5e). Parameters, optimizer state and batch-norm statistics and
  normalisation stay float32, and XLA on a TPU already rounds float32 convolution
  inputs to bfloat16 for its one-pass default precision; what changes is the
  precision activations are stored in. That it leaves accuracy unchanged is argued,
  not measured (no TPU here): `--config.dtype=float32` is the check.
"""

import os
import runpy

imagenet = runpy.run_path(os.path.join(os.path.dirname(__file__), "imagenet.py"))
PER_CHIP = 128


def get_config(arg="v2_1.0_224"):
  config = imagenet["get_config"](arg)
  config.learning_rate *= PER_CHIP / config.per_device_batch_size
  config.per_device_batch_size = PER_CHIP
  config.dtype = "bfloat16"
  return config
