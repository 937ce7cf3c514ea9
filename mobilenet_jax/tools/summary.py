"""Per-layer table of a configured model in the papers' style.

  python -m mobilenet_jax.tools.summary --config configs/default.py
  python -m mobilenet_jax.tools.summary --config configs/mobilenet_v1.py \
      --config.model.alpha=0.5 --config.image_size=160 --json
"""

import itertools
import json

from absl import flags
from ml_collections import config_flags

from mobilenet_jax import cli, defaults, madds

config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
flags.DEFINE_bool("layers", False, "One row per layer instead of per table row.")


def table_rows(layer_list, per_layer: bool):
  """Groups consecutive layers of one paper-table row (t, c, n, s)."""
  rows = []
  key = (lambda l: l.name) if per_layer else (lambda l: (l.group, l.name.split("/")[0]))
  blocks = [list(g) for _, g in itertools.groupby(layer_list, key)]
  for group, runs in itertools.groupby(blocks, lambda b: b[0].group):
    runs = list(runs)
    first = runs[0]
    t = next((l.output_shape[2] / l.input_shape[2] for l in first
              if l.name.endswith("expand")), 1) if "bottleneck" in group else None
    h, w, c = first[0].input_shape
    rows.append(dict(
        input=f"{h}x{w}x{c}",
        operator=(first[0].name if per_layer else group.split(" ")[0])
        + ("" if not per_layer else f" ({first[0].operator})"),
        t="-" if t is None else f"{t:g}",
        c=first[-1].output_shape[2],
        n=len(runs),
        s=max(l.stride for l in first),
        params=sum(l.params for b in runs for l in b),
        madds=sum(l.madds for b in runs for l in b)))
  return rows


def format_table(rows, totals) -> str:
  head = f"{'Input':>14} {'Operator':<28} {'t':>3} {'c':>5} {'n':>2} {'s':>2} {'Params':>11} {'MAdds':>14}"
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(f"{r['input']:>14} {r['operator']:<28} {r['t']:>3} {r['c']:>5} "
                 f"{r['n']:>2} {r['s']:>2} {r['params']:>11,} {r['madds']:>14,}")
  lines.append("-" * len(head))
  lines.append(f"Total params {totals['params']:,} (trainable "
               f"{totals['trainable_params']:,}); MAdds {totals['madds']:,} "
               f"({totals['madds'] / 1e6:.1f}M) per image")
  return "\n".join(lines)


def main(argv):
  del argv
  config = flags.FLAGS.config
  defaults.validate(config)
  layer_list = madds.layers(config.model, config.image_size)
  totals = madds.totals(layer_list)
  if flags.FLAGS.json:
    print(json.dumps(dict(model=config.model.name, image_size=config.image_size,
                          **totals, layers=[l.__dict__ for l in layer_list])))
  else:
    print(format_table(table_rows(layer_list, flags.FLAGS.layers), totals))


def run():
  """The `mobilenet-summary` console script."""
  cli.run(main)


if __name__ == "__main__":
  cli.run(main)
