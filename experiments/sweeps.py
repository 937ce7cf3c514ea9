"""What the shipped sweeps share: configs/default.py, trained to convergence.

The default's whole budget, 60 epochs of the digits (1,320 steps of batch 64),
evaluated every 6 epochs (10 times): the reports compare how fast each variant
learns as well as where it ends, and check that it ended (its last two
evaluations within 1 point). Seeds: 5 for the MobileNetV2 sweeps, whose
effects the paper reports as small (Fig. 6), 3 elsewhere.
"""

from mobilenet_jax import defaults

EPOCHS = 60
EVAL_EVERY = 132  # steps: 10 evaluations over 1,320
# Saving at every evaluation took 13% of a run on the 2-core CPU; at every
# fifth, a preempted run loses at most 660 steps (about 40 s) instead.
CHECKPOINT_EVERY = 5 * EVAL_EVERY
V2_SEEDS = [0, 1, 2, 3, 4]
SEEDS = [0, 1, 2]


def base_config(model_name: str = None):
  """The default config for the whole budget; with `model_name`, that
  network's model section with the default's digits settings (`model`), so
  variants change it with dotted keys and `--set model.num_classes=1000`
  reaches every run."""
  config = defaults.get_config()
  if model_name:
    config.model = model(model_name)
  config.num_epochs = EPOCHS
  config.eval_every_steps = EVAL_EVERY
  config.checkpoint_every_steps = CHECKPOINT_EVERY
  config.log_every_steps = EVAL_EVERY
  return config


def by_budget(key: str, values) -> dict:
  """A sweep's variants and gap plot for `key` at the default's budget and at
  twice it: variants "<value>_<epochs>_epochs", and the gap values[0] -
  values[1] against the budget (learns slower, or ends worse?)."""
  return dict(
      variants={f"{value}_{epochs}_epochs": {"num_epochs": epochs, key: value}
                for epochs in (EPOCHS, 2 * EPOCHS) for value in values},
      plot="gap", gap=dict(x="num_epochs", split=key, minus=list(values),
                           xlabel="training epochs"))


def model(name: str, **changes):
  """A model config with the default's digits settings (10 classes, BN
  momentum 0.9, no dropout) and `changes`."""
  m = defaults.for_digits(defaults.model_config(name))
  m.update(changes)
  return m


# Quantization-aware training as it is usually done: a short fine-tune of the
# float run (its final checkpoint, same seed) with int8 simulated, at a tenth
# of the learning rate and without warmup. Not tuned on these sweeps' results.
QAT_EPOCHS = 10
QAT_EVAL_EVERY = 44  # steps: 5 evaluations over 220
PTQ = ("per_channel", "per_tensor")


def with_precisions(variants: dict) -> dict:
  """Each float variant evaluated after training as int8 with post-training
  quantization (per-channel and per-tensor weights); "<name>_qat", its run
  fine-tuned with quantization-aware training; and "<name>_ft", the same
  fine-tune in float, which tells what the extra epochs give apart from
  quantization. Returns the variants, and the sweep's `precision` key."""
  fine_tune = dict(num_epochs=QAT_EPOCHS, learning_rate=base_config().learning_rate / 10,
                   warmup_epochs=0.0, eval_every_steps=QAT_EVAL_EVERY,
                   log_every_steps=QAT_EVAL_EVERY, checkpoint_every_steps=5 * QAT_EVAL_EVERY)
  out = {}
  for name, changes in variants.items():
    out[name] = dict(changes, ptq_eval=PTQ)
  for name, changes in variants.items():
    out[f"{name}_qat"] = dict(changes, quantization="int8", init_from=f"variant:{name}",
                              **fine_tune)
  for name, changes in variants.items():
    out[f"{name}_ft"] = dict(changes, init_from=f"variant:{name}", **fine_tune)
  return out, dict(qat={name: f"{name}_qat" for name in variants},
                   fine_tune={name: f"{name}_ft" for name in variants})


QUANTIZATION_NOTES = [
    "int8 is simulated in float32 as TFLite computes it (mobilenet_jax/ops/quantize.py): "
    "weights with batch norm folded in, symmetric, per output channel or per tensor; "
    "activations asymmetric, one range per tensor ([0, 6] after ReLU6). PTQ calibrates "
    "the activation ranges on 200 training images; the export command's TFLite int8 "
    "model agrees with this simulation on most test images (README, export).",
    "QAT is a 10-epoch fine-tune of each float run (the same seed), at a tenth of the "
    "learning rate: 70 epochs in all against the float runs' 60. Its int8 top-1 is "
    "compared with the float run it started from (as torchvision and the TF QAT guide "
    "report it) and with the same fine-tune in float (`_ft`), which separates what "
    "quantization costs from what the extra epochs give.",
]

NOTES = [
    "Scale: the 8x8 handwritten digits upsampled to 32 px, 1,437 training and 360 "
    "test images, 10 classes, one 2-core CPU. The papers' figures are ImageNet "
    "top-1 (1.28M images, 1,000 classes, 224 px); an effect here is evidence about "
    "the mechanism at this scale, not a replication of the paper's number.",
    "Train times were measured on a shared 2-core CPU while other jobs ran; "
    "compare them only roughly.",
]
