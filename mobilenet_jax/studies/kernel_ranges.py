"""How far apart the channels of each folded depthwise kernel are: why
per-tensor int8 weights cost a network little or much.

  python -m mobilenet_jax.studies.kernel_ranges runs/width_precision/alpha_0.35/seed_0 ...

With batch norm folded in (w * gamma / sqrt(var + eps), ops/quantize.py), one
int8 scale per tensor is set by the widest channel: a channel whose range is
far below it keeps few of the 255 levels, or rounds to zero. For each run's
checkpoint this prints, over its depthwise layers, the widest channel's range
against the median channel's, and the share of channels whose every weight
rounds to zero with one scale per tensor; for a QAT run also the activation
ranges it learned for the outputs of its expansion and depthwise layers (ReLU6's
are [0, 6] by construction; a ReLU's top sets how coarse its int8 step is).
"""

from typing import Dict

import flax
import numpy as np
from absl import app

from mobilenet_jax.training import checkpoint, run


def spreads(params: dict, batch_stats: dict, epsilon: float) -> Dict[str, dict]:
  """{depthwise layer path: {"spread": widest / median channel range,
  "zeroed": share of channels rounded to zero per tensor}}."""
  p = flax.traverse_util.flatten_dict(params, sep="/")
  s = flax.traverse_util.flatten_dict(batch_stats, sep="/")
  out = {}
  for path in sorted(k for k in p if k.endswith("depthwise/conv/kernel")):
    bn = path[:-len("conv/kernel")] + "bn/"
    fold = np.asarray(p[bn + "scale"]) / np.sqrt(np.asarray(s[bn + "var"]) + epsilon)
    ranges = np.abs(np.asarray(p[path]) * fold).reshape(-1, fold.shape[0]).max(axis=0)
    step = ranges.max() / 127  # the per-tensor int8 step
    out[path[:-len("/conv/kernel")]] = {"spread": float(ranges.max() / np.median(ranges)),
                                        "zeroed": float(np.mean(ranges < step / 2))}
  return out


def activation_tops(batch_stats: dict) -> list:
  """The upper ends of the learned ranges of expansion and depthwise outputs."""
  s = flax.traverse_util.flatten_dict(batch_stats, sep="/")
  return [float(v) for k, v in sorted(s.items())
          if k.endswith(("expand/quant/max", "depthwise/quant/max"))]


def describe(workdir: str) -> str:
  state, meta, _ = checkpoint.restore_on_one_device(workdir)
  epsilon = run.model_config(meta).get("bn_epsilon", 1e-3)
  layers = spreads(state["params"], state["batch_stats"], epsilon)
  values = [v["spread"] for v in layers.values()]
  zeroed = [v["zeroed"] for v in layers.values()]
  line = (f"{workdir}: {len(layers)} depthwise layers; widest / median channel range: "
          f"median {np.median(values):.1f}x, largest {max(values):.1f}x; channels rounded "
          f"to zero per tensor: {100 * np.mean(zeroed):.1f}% on average, "
          f"{100 * max(zeroed):.1f}% at most")
  tops = activation_tops(state["batch_stats"])
  if tops:
    line += (f"; learned ranges of {len(tops)} expansion and depthwise outputs: top "
             f"median {np.median(tops):.1f}, largest {max(tops):.1f}")
  return line


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("pass one or more run workdirs")
  for workdir in argv[1:]:
    print(describe(workdir))


if __name__ == "__main__":
  app.run(main)
