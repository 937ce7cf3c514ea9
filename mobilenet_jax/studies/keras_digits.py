"""Keras's own MobileNetV2 trained with this project's recipe and batches.

The check behind a claim about an architecture change (here MobileNetV2's
linear bottleneck, Fig. 6a): the same runs with a network this project did
not write. The network is `keras.applications.MobileNetV2(weights=None)` as
shipped (its layers, padding, widths, initialisers, global average pooling +
dense), with one change: `bottleneck_activation="relu6"` puts a ReLU6 after
the projection batch norm of every inverted-residual block (all 17
`*_project_BN` layers, before the residual add, where this project's
`InvertedResidual` applies it); "linear" is Keras as shipped. The change is
made by `keras.models.clone_model` of the Keras model, with a `call_function`
that appends a `ReLU(6.0)` to each projection BN's output; the clone then
takes the weights Keras initialised (`set_weights`). No Keras source is
copied.

Training follows the project config (`mobilenet_jax.defaults.get_config()`):
the batches of the project's own input pipeline (same order, same
augmentation), Keras's AdamW with the project's learning-rate schedule
(`training.optim.create_schedule`: warm-up + cosine over the same steps),
decoupled weight decay on the parameters the config's `no_decay` regexes do
not exclude (each Keras weight is named by its project counterpart, paired
in layer order as `interop.keras` does), label smoothing, BN momentum and
epsilon, dropout before the classifier, the batch size, and evaluation at the
same steps over the eval split, each example once (the mask). What stays
Keras's: its initialisers (glorot_uniform; the project's are lecun_normal),
and Adam's epsilon "hat" (added to sqrt(v) before the bias correction, so
early steps see eps / sqrt(1 - b2^t) where optax sees eps; with eps 1e-8
that is below 3.2e-7 and vanishes as t grows).

  python -m mobilenet_jax.studies.keras_digits --workdir W \
      --bottleneck_activation relu6 --seed 0 [--num_epochs 60]
  python -m mobilenet_jax.studies.keras_digits --workdir W \
      --variants linear,relu6 --seeds 0,1,2 [--out DIR] [--init project]

The second writes W/<variant>/seed_<s>/results.json (in the project's format,
as far as `mobilenet_jax.tools.report` reads it) and W/sweep.json, so
`python -m mobilenet_jax.tools.report W --out DIR` builds the report. A run whose
results.json exists is skipped. `--init project` starts every run from the
project run's own initial weights at the same seed instead of Keras's
initialisers: what is left different is the framework.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Callable, Dict, List, Optional  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mobilenet_jax import cli, defaults, records  # noqa: E402
from mobilenet_jax.errors import ConfigError  # noqa: E402

BOTTLENECK_ACTIVATIONS = ("linear", "relu6")
MODEL_NAME = "keras_mobilenet_v2"
PROJECT_SUFFIX = "_project_BN"  # Keras's name of each block's projection BN
ADAM_EPSILON = 1e-8  # optax.adamw's default (Keras's is 1e-7)


# ----------------------------------------------------------------- model ---

def build(alpha: float = 0.5, bottleneck_activation: str = "linear",
          num_classes: int = 10, image_size: int = 32, bn_momentum: float = 0.9,
          dropout: float = 0.0, bn_epsilon: float = 1e-3) -> keras.Model:
  """keras.applications.MobileNetV2 (weights=None, logits out) with
  `bottleneck_activation` after every projection BN, BN momentum and epsilon
  set, and Dropout(`dropout`) before the classifier when dropout > 0 (Keras
  has none; the project's head is pool -> dropout -> dense)."""
  if bottleneck_activation not in BOTTLENECK_ACTIVATIONS:
    raise ConfigError(f"bottleneck_activation={bottleneck_activation!r} is not "
                      f"valid; use one of {', '.join(BOTTLENECK_ACTIVATIONS)}.")
  base = keras.applications.MobileNetV2(
      input_shape=(image_size, image_size, 3), alpha=alpha, weights=None,
      classes=num_classes, classifier_activation=None)

  def call_function(layer, *args, **kwargs):
    if layer.name == "predictions" and dropout > 0:
      args = (keras.layers.Dropout(dropout, name="dropout")(args[0]),) + args[1:]
    out = layer(*args, **kwargs)
    if layer.name.endswith(PROJECT_SUFFIX) and bottleneck_activation == "relu6":
      out = keras.layers.ReLU(6.0, name=layer.name[:-len("_BN")] + "_relu")(out)
    return out

  # New layers (each with one node, so every layer's .input and .output are
  # this graph's), holding the weights Keras initialised in `base`: the same
  # start for both variants at one seed (an activation adds no weights).
  model = keras.models.clone_model(base, call_function=call_function)
  model.set_weights(base.get_weights())
  model.name = f"{base.name}_{bottleneck_activation}"
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum, layer.epsilon = bn_momentum, bn_epsilon
  return model


def projection_layers(model: keras.Model) -> List[keras.layers.Layer]:
  """The projection BN of every inverted-residual block, in order."""
  return [l for l in model.layers if l.name.endswith(PROJECT_SUFFIX)]


def check_model_config(config):
  """ConfigError unless config.model is what `build` can reproduce."""
  m = config.model
  plain = defaults.model_config("mobilenet_v2")
  fixed = ("blocks", "expansion", "shortcut", "min_depth", "divisible_by",
           "finegrain_classification_mode", "output_stride", "include_top",
           "pooling", "freeze_bn", "padding")
  if m.name != "mobilenet_v2":
    raise ConfigError(f"model.name={m.name!r}: the Keras peer is MobileNetV2 only.")
  for key in fixed:
    if key in plain and m[key] != plain[key]:
      raise ConfigError(f"model.{key}={m[key]!r}: the Keras peer builds Keras's "
                        f"MobileNetV2, which has {plain[key]!r}.")
  if m.bottleneck_activation not in BOTTLENECK_ACTIVATIONS:
    raise ConfigError(f"model.bottleneck_activation={m.bottleneck_activation!r}: "
                      f"the Keras peer has {', '.join(BOTTLENECK_ACTIVATIONS)}.")
  for key, allowed in (("optimizer", "adamw"), ("dtype", "float32"),
                       ("ema_decay", 0.0), ("sync_bn", False)):
    if config[key] != allowed:
      raise ConfigError(f"{key}={config[key]!r}: the Keras peer supports {allowed!r} only.")
  if config.dataset == "synthetic" or config.init_from or config.eval_only:
    raise ConfigError("the Keras peer trains from scratch on a TFDS dataset.")


def build_from_config(config, init: str = "keras") -> keras.Model:
  """`build` with config.model's knobs, seeded with config.seed; with init
  "project", its weights are then set to the project's own initialisation."""
  m = config.model
  keras.utils.set_random_seed(config.seed)
  model = build(m.alpha, m.bottleneck_activation, m.num_classes, config.image_size,
                m.bn_momentum, m.dropout, m.bn_epsilon)
  if init == "project":
    set_project_init(model, config)
  return model


def set_project_init(model: keras.Model, config):
  """Every trainable weight of `model` set to its project counterpart's value
  in the state a project run of `config` starts from (Flax's lecun_normal
  kernels, seeded with config.seed): the same start as that run, to tell the
  frameworks apart from their initialisers."""
  import jax
  import optax
  from mobilenet_jax.training import steps
  state = steps.create_train_state(steps.create_model(config.model), config.image_size,
                                   optax.identity(), jax.random.key(config.seed),
                                   ema=False)
  from mobilenet_jax.interop.keras import subtree
  paths = project_paths(model, config.model, config.image_size)
  for v in model.trainable_variables:
    value = np.asarray(subtree(state.params, paths[v.path]))
    v.assign(value.reshape(v.shape))  # depthwise: (k, k, 1, C) -> (k, k, C, 1)


# ----------------------------------------------------------- weight decay ---

def project_paths(model: keras.Model, model_config, image_size: int) -> Dict[str, str]:
  """{Keras trainable variable path: the project parameter path it stands
  for}, e.g. "block_1_depthwise/depthwise_kernel" ->
  "block_1/depthwise/conv/kernel". Layers are paired in call order, as
  interop.keras pairs them for weight conversion; shapes are checked."""
  import jax
  import jax.numpy as jnp
  from mobilenet_jax.interop.keras import flax_slots, subtree
  from mobilenet_jax.models import get_model
  project = get_model(model_config)
  variables = jax.eval_shape(lambda: project.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
  slots = flax_slots(variables)
  weighted = [l for l in model.layers if l.weights]
  if len(weighted) != len(slots):
    raise ConfigError(f"Keras model has {len(weighted)} weighted layers, the "
                      f"project's {len(slots)}: not the same architecture.")
  names = {"kernel": "kernel", "depthwise_kernel": "kernel", "bias": "bias",
           "gamma": "scale", "beta": "bias"}
  out = {}
  for layer, (path, _) in zip(weighted, slots):
    node = subtree(variables["params"], path)
    for v in layer.trainable_weights:
      key = names[v.path.rsplit("/", 1)[-1]]
      if int(np.prod(v.shape)) != int(np.prod(node[key].shape)):
        raise ConfigError(f"{v.path} {tuple(v.shape)} pairs with {path}/{key} "
                          f"{tuple(node[key].shape)}: not the same architecture.")
      out[v.path] = f"{path}/{key}"
  return out


def decayed(model: keras.Model, config) -> Dict[str, bool]:
  """{Keras trainable variable path: whether it is weight-decayed}: not when
  its project path matches one of config.no_decay (as optim.decay_mask)."""
  patterns = [re.compile(p) for p in config.no_decay]
  paths = project_paths(model, config.model, config.image_size)
  return {k: not any(p.search(v) for p in patterns) for k, v in paths.items()}


# -------------------------------------------------------------- optimizer ---

class TableSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """The learning rate of each step from a table (the project's optax
  schedule evaluated at 0..N-1); the last value past the end."""

  def __init__(self, values):
    self.values = np.asarray(values, np.float32)
    self.table = tf.constant(self.values)

  def __call__(self, step):
    index = tf.minimum(tf.cast(step, tf.int32), len(self.values) - 1)
    return tf.gather(self.table, index)

  def get_config(self):
    return {"values": self.values.tolist()}


def learning_rates(config, per_epoch: int, num_steps: int) -> np.ndarray:
  """schedule(step) for step 0..num_steps-1, as optax evaluates it (the
  update of step s + 1 uses schedule(s))."""
  import jax.numpy as jnp
  from mobilenet_jax.training import optim
  schedule = optim.create_schedule(config, per_epoch, num_steps)
  return np.asarray(schedule(jnp.arange(num_steps)), np.float32)


def create_optimizer(model: keras.Model, config, per_epoch: int, num_steps: int):
  """Keras AdamW with the project's schedule, betas, decoupled weight decay
  (lr * wd * w, as optax.adamw) on the decayed variables only, and global
  norm clipping when config.grad_clip_norm > 0."""
  opt = keras.optimizers.AdamW(
      learning_rate=TableSchedule(learning_rates(config, per_epoch, num_steps)),
      weight_decay=config.weight_decay, beta_1=config.adam_b1,
      beta_2=config.adam_b2, epsilon=ADAM_EPSILON,
      global_clipnorm=config.grad_clip_norm or None)
  mask = decayed(model, config)
  opt.exclude_from_weight_decay(
      var_list=[v for v in model.trainable_variables if not mask[v.path]])
  return opt


# -------------------------------------------------------------- training ---

def eval_sums(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict:
  """As steps.metric_sums: unsmoothed cross-entropy, top-1, top-5, count."""
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  loss = -log_probs[np.arange(len(labels)), labels]
  k = min(5, logits.shape[-1])
  top5 = (np.argsort(-logits, -1, kind="stable")[:, :k] == labels[:, None]).any(-1)
  return {"loss": float((loss * mask).sum()),
          "top1": float(((logits.argmax(-1) == labels) * mask).sum()),
          "top5": float((top5 * mask).sum()), "count": float(mask.sum())}


def batch_size(config, eval: bool = False) -> int:
  """The global batch of a one-device project run: batch_size if > 0, else
  the per-device one (not times this process's JAX device count)."""
  if eval:
    return (config.eval_batch_size if config.eval_batch_size > 0
            else config.eval_per_device_batch_size)
  return config.batch_size if config.batch_size > 0 else config.per_device_batch_size


def evaluate(infer, config, builder) -> dict:
  """Loss, top-1, top-5 over the eval split, each example once (the mask)."""
  from mobilenet_jax.data import input_pipeline
  totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}
  for batch in input_pipeline.eval_batches(config, builder, [0], 1,
                                           batch_size(config, eval=True)):
    logits = infer(tf.constant(batch["image"])).numpy()
    for k, v in eval_sums(logits, np.asarray(batch["label"]),
                          np.asarray(batch["mask"])).items():
      totals[k] += v
  n = totals["count"]
  return {"eval_loss": totals["loss"] / n, "eval_top1": totals["top1"] / n,
          "eval_top5": totals["top5"] / n, "eval_count": int(n)}


def train(config, workdir: str,
          on_step: Optional[Callable[[int, dict, float], None]] = None,
          init: str = "keras") -> dict:
  """Trains the Keras model of `config` with its recipe, evaluating at the
  project's steps; writes and returns workdir/results.json. A workdir that
  has one is not run again (its results are returned). `on_step(step, batch,
  loss)` is called after each training step with the batch it consumed.
  `init`: Keras's initialisers, or "project" (`set_project_init`)."""
  if records.has_results(workdir):
    print(f"keras_digits: {records.results_path(workdir)} exists; skipped", flush=True)
    return records.read_results(workdir)
  defaults.validate(config)
  check_model_config(config)
  from mobilenet_jax import madds
  from mobilenet_jax.data import input_pipeline
  from mobilenet_jax.training import loop
  os.makedirs(workdir, exist_ok=True)

  builder = loop.open_dataset(config)
  global_batch = batch_size(config)
  per_epoch = max(1, input_pipeline.num_examples(builder, config.train_split)
                  // global_batch)  # as loop.steps_per_epoch
  num_steps = loop.total_steps(config, per_epoch)
  model = build_from_config(config, init)
  counts = madds.count(config.model, config.image_size)
  if model.count_params() != counts["params"]:
    raise ConfigError(f"Keras model has {model.count_params()} parameters, the "
                      f"project's {counts['params']}: not the same network.")
  opt = create_optimizer(model, config, per_epoch, num_steps)
  rates = learning_rates(config, per_epoch, num_steps)  # step s uses rates[s - 1]
  loss_fn = keras.losses.CategoricalCrossentropy(
      from_logits=True, label_smoothing=config.label_smoothing)
  num_classes = config.model.num_classes

  @tf.function(jit_compile=False)
  def train_step(images, labels):
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      loss = loss_fn(tf.one_hot(labels, num_classes), logits)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  @tf.function(jit_compile=False)
  def infer(images):
    return model(images, training=False)

  batches = input_pipeline.train_batches(config, builder, [0], 1, global_batch,
                                         0, num_steps, workers=0)
  history, step_times = [], []
  t0 = time.time()
  for step in range(1, num_steps + 1):
    batch = next(batches)
    t = time.perf_counter()
    loss = float(train_step(tf.constant(batch["image"]),
                            tf.constant(np.asarray(batch["label"]), tf.int32)))
    step_times.append(time.perf_counter() - t)
    if not np.isfinite(loss):
      raise RuntimeError(f"loss is not finite at step {step}; stopped.")
    if on_step is not None:
      on_step(step, batch, loss)
    last = step == num_steps
    if step % config.log_every_steps == 0 or last:
      print(f"keras_digits: step {step}/{num_steps}: loss {loss:.4f}, lr "
            f"{rates[step - 1]:.3g}", flush=True)
    if step % config.eval_every_steps == 0 or last:
      result = evaluate(infer, config, builder)
      history.append({"step": step, **result})
      print(f"keras_digits: step {step} eval: " + ", ".join(
          f"{k} {v:.4f}" for k, v in result.items()), flush=True)
  train_time = time.time() - t0

  record = config.to_dict()
  record["model"]["name"] = MODEL_NAME
  record["model"]["bottleneck_activation"] = config.model.bottleneck_activation
  results = {
      "config": record,
      "num_devices": 1,
      "num_processes": 1,
      "device_kind": "cpu (Keras)",
      "framework": f"keras {keras.__version__} / tensorflow {tf.__version__}",
      "init": init,
      "global_batch_size": global_batch,
      "steps": num_steps,
      "train_time_s": train_time,
      # The first step traces the tf.function: not a steady-state step.
      "step_time_s_median": statistics.median(step_times[1:] or step_times),
      **counts,
      "params": int(model.count_params()),
      **{k: v for k, v in history[-1].items() if k != "step"},
      "history": history,
  }
  records.write_results(workdir, results)
  return results


# ------------------------------------------------------------ the command ---

SWEEP_NAME = "keras_bottleneck_activation"
QUESTION = ("Does a linear bottleneck beat a ReLU6 one (MobileNetV2 Fig. 6a) in "
            "Keras's own MobileNetV2, trained with this project's recipe and batches?")
NOTES = [
    "Peer check: keras.applications.MobileNetV2 (weights=None) as shipped, with a "
    "ReLU6 inserted after every *_project_BN for the relu6 variant; trained by "
    "mobilenet_jax.studies.keras_digits on the project's own input batches with its "
    "AdamW recipe (schedule, weight decay mask, label smoothing, BN momentum).",
    "Differences from the project's runs: Keras's initialisers (glorot_uniform, the "
    "project's are lecun_normal), Keras AdamW's epsilon-hat (eps 1e-8 added before "
    "bias correction), TensorFlow's CPU kernels.",
]
INITS = ("keras", "project")
PROJECT_INIT_NOTE = ("With --init project: every weight starts from the project run's "
                     "own initialisation at the same seed (Flax's lecun_normal), not "
                     "Keras's initialisers.")


def write_sweep_record(workdir: str, variants: List[str], seeds: List[int],
                       command: str, init: str = "keras"):
  """sweep.json as ablate writes it; a resumed sweep keeps its first commit."""
  project = init == "project"
  record = {"name": SWEEP_NAME + ("_project_init" if project else ""),
            "question": QUESTION, "plot": "curves",
            "notes": NOTES + ([PROJECT_INIT_NOTE] if project else []),
            "variants": list(variants), "seeds": sorted(seeds),
            "command": command, "commit": cli.git_commit()}
  if "linear" in variants:
    record["compare_to"] = "linear"
  records.write_sweep(workdir, record)


def make_config(args, bottleneck_activation: str, seed: int):
  config = defaults.get_config()
  config.seed = seed
  config.model.bottleneck_activation = bottleneck_activation
  for key in ("num_epochs", "num_train_steps", "eval_every_steps",
              "log_every_steps", "data_dir"):
    if getattr(args, key) is not None:
      config[key] = getattr(args, key)
  return config


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--bottleneck_activation", default="linear",
                 choices=BOTTLENECK_ACTIVATIONS)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--variants", default=None,
                 help="comma-separated bottleneck activations: a sweep into "
                      "WORKDIR/<variant>/seed_<s>")
  p.add_argument("--seeds", default=None, help="comma-separated seeds (sweep)")
  p.add_argument("--num_epochs", type=float, default=None)
  p.add_argument("--num_train_steps", type=int, default=None)
  p.add_argument("--eval_every_steps", type=int, default=None)
  p.add_argument("--log_every_steps", type=int, default=None)
  p.add_argument("--data_dir", default=None)
  p.add_argument("--init", default="keras", choices=INITS,
                 help="Keras's initialisers, or the project run's initial weights")
  p.add_argument("--out", default=None, help="sweep: also write the report here")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.variants is None and args.seeds is None:
    train(make_config(args, args.bottleneck_activation, args.seed), args.workdir,
          init=args.init)
    return
  variants = (args.variants.split(",") if args.variants
              else [args.bottleneck_activation])
  seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
  for v in variants:
    if v not in BOTTLENECK_ACTIVATIONS:
      raise ConfigError(f"variant {v!r}: use {', '.join(BOTTLENECK_ACTIVATIONS)}.")
  command = "python -m mobilenet_jax.studies.keras_digits " + " ".join(
      sys.argv[1:] if argv is None else argv)
  write_sweep_record(args.workdir, variants, seeds, command, args.init)
  runs = [(v, s) for v in variants for s in seeds]
  for i, (v, s) in enumerate(runs, 1):
    print(f"keras_digits: run {i}/{len(runs)} {v}/seed_{s}", flush=True)
    train(make_config(args, v, s), os.path.join(args.workdir, v, f"seed_{s}"),
          init=args.init)
  if args.out:
    from mobilenet_jax.tools import report
    print(report.write_report(args.workdir, args.out))


if __name__ == "__main__":
  main()
