"""Peer implementations measured side by side with this project's benchmark.

Each module is a script that prints one JSON line:
  python -m mobilenet_jax.peers.keras_peer --model mobilenet_v2 --alpha 1.0 \
      --image_size 224 --batch_size 32 --steps 10
Only the peer imports its framework (TensorFlow/Keras, PyTorch/timm).
"""

import argparse
import json


def parse_args(extra=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="mobilenet_v2",
                      choices=["mobilenet_v1", "mobilenet_v2"])
  parser.add_argument("--alpha", type=float, default=1.0)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--mode", default="both", choices=["train", "infer", "both"])
  for args, kwargs in extra or []:
    parser.add_argument(*args, **kwargs)
  return parser.parse_args()


def emit(result: dict):
  print(json.dumps(result), flush=True)
