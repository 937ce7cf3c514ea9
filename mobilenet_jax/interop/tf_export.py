"""Checkpoints -> TFLite or SavedModel through jax2tf, checked and timed.

  python -m mobilenet_jax.tools.export --workdir /tmp/run --format tflite
  python -m mobilenet_jax.tools.export --workdir /tmp/run --format tflite --quantize int8
  python -m mobilenet_jax.tools.export --workdir /tmp/run --format saved_model

The network goes through jax2tf (StableHLO) with XLA's convolutions for the
depthwise and 1x1 layers, which the TFLite converter turns into its own
DEPTHWISE_CONV_2D and CONV_2D (batch norm folded in). Inputs are images
preprocessed as for evaluation (float32 NHWC in [-1, 1]); outputs are logits.
int8 is full-integer post-training quantisation of the weights and
activations (inputs and outputs stay float32), calibrated on training images
from the run's input pipeline. A run trained with quantization=int8 (QAT)
exports only so: its kernels, batch norm folded in, go to the converter
already on their int8 grid (per-tensor ones with the converter's per-channel
scales turned off), and the export is checked against the QAT model's own
evaluation (its int8 simulation, ops/quantize.py).

Every export is checked against the JAX model on evaluation images (largest
logit difference; for int8 the share of equal top-1 predictions), and a TFLite
export is timed with the TFLite interpreter on one CPU thread next to a Keras
Applications model of the same architecture converted the same way. The
figures are printed and written to <output>.json.
"""

import contextlib
import io
import json
import os
import warnings
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

from mobilenet_jax import timing
from mobilenet_jax.models import get_model
from mobilenet_jax.ops.quantize import Quantization, rounded_float_variables
from mobilenet_jax.training import checkpoint, run, steps
from mobilenet_jax.errors import ConfigError

FORMATS = ("tflite", "saved_model")


# ------------------------------------------------------------ the network ---

def load_run(workdir: str, step: Optional[int] = None):
  """(model config, image size, run config or None, variables) of a checkpoint."""
  state, meta, _ = checkpoint.restore_on_one_device(workdir, step)
  config = meta.get("config")
  return (run.model_config(meta), run.image_size(meta),
          ml_collections.ConfigDict(config) if config else None,
          {"params": state["params"], "batch_stats": state["batch_stats"]})


def inference_fn(model_config: dict, variables,
                 quantization: Optional[Quantization] = None) -> Callable:
  """images -> logits with the convolutions TFLite has kernels for."""
  model = get_model(model_config, depthwise_impl="lax", pointwise_impl="conv",
                    quantization=quantization)
  return jax.jit(lambda images: model.apply(variables, images, train=False))


def tf_function(fn: Callable, image_size: int, batch: Optional[int]):
  """`fn` as a tf.function on float32 images; batch None is any batch."""
  import tensorflow as tf
  from jax.experimental import jax2tf
  converted = jax2tf.convert(fn, with_gradient=False, polymorphic_shapes=(
      None if batch else ["(b, _, _, _)"]))
  return tf.function(converted, autograph=False, input_signature=[
      tf.TensorSpec((batch, image_size, image_size, 3), tf.float32, name="images")])


# -------------------------------------------------------------- writers ---

def tflite_converter(converter, calibration: Optional[np.ndarray], per_tensor: bool = False):
  """The same settings for our model and Keras': float, or full int8 (with
  per-tensor weight scales if `per_tensor`)."""
  import tensorflow as tf
  if calibration is not None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # The converter's switch (TF 2.x) for one scale per weight tensor.
    converter._experimental_disable_per_channel = per_tensor
  return converter.convert()


def to_tflite(fn: Callable, image_size: int, calibration: Optional[np.ndarray] = None,
              per_tensor: bool = False) -> bytes:
  """TFLite flatbuffer of `fn` for one image; int8 if `calibration` images are given."""
  import tensorflow as tf
  function = tf_function(fn, image_size, batch=1)
  return tflite_converter(tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()], function), calibration, per_tensor)


def keras_tflite(model_config: dict, image_size: int,
                 calibration: Optional[np.ndarray] = None) -> Optional[bytes]:
  """The Keras Applications model of the same architecture (random weights),
  converted the same way; None if Keras has no such model."""
  import tensorflow as tf
  from mobilenet_jax.interop.keras import keras_counterpart
  keras_model = keras_counterpart(model_config, image_size)
  if keras_model is None:
    return None
  with contextlib.redirect_stdout(io.StringIO()):  # Keras prints its export
    return tflite_converter(tf.lite.TFLiteConverter.from_keras_model(keras_model),
                            calibration)


def to_saved_model(fn: Callable, image_size: int, out: str):
  """A SavedModel whose serving signature maps images (any batch) to logits."""
  import tensorflow as tf
  module = tf.Module()
  module.serve = tf_function(fn, image_size, batch=None)
  tf.saved_model.save(module, out, signatures={"serving_default": module.serve})


# --------------------------------------------------------------- checks ---

def interpreter(model_bytes: bytes, threads: int = 1):
  import tensorflow as tf
  with warnings.catch_warnings():  # "use ai_edge_litert": not on PyPI for all platforms
    warnings.simplefilter("ignore", UserWarning)
    runner = tf.lite.Interpreter(model_content=model_bytes, num_threads=threads)
  runner.allocate_tensors()
  return runner


def tflite_logits(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
  """The TFLite model's outputs for `images`, one image per call."""
  runner = interpreter(model_bytes)
  (inp,), (out,) = runner.get_input_details(), runner.get_output_details()
  logits = []
  for image in images:
    runner.set_tensor(inp["index"], image[None].astype(np.float32))
    runner.invoke()
    logits.append(runner.get_tensor(out["index"])[0].copy())
  return np.stack(logits)


def tflite_latency_ms(model_bytes: bytes, image_size: int, runs: int = 30) -> float:
  """Median time of one single-image inference on one CPU thread."""
  runner = interpreter(model_bytes, threads=1)
  inp = runner.get_input_details()[0]
  runner.set_tensor(inp["index"], np.zeros((1, image_size, image_size, 3), np.float32))
  # One untimed call: the first one allocates.
  return 1000 * float(np.median(timing.time_steps(runner.invoke, 1, runs)))


def agreement(reference: np.ndarray, logits: np.ndarray, labels=None) -> dict:
  """Largest logit difference, share of equal top-1, and top-1 accuracies."""
  out = {"max_abs_difference": float(np.max(np.abs(reference - logits))),
         "top1_agreement": float(np.mean(reference.argmax(-1) == logits.argmax(-1))),
         "examples": int(len(logits))}
  if labels is not None:
    out["top1_jax"] = float(np.mean(reference.argmax(-1) == labels))
    out["top1_export"] = float(np.mean(logits.argmax(-1) == labels))
  return out


# ------------------------------------------------------------------ job ---

def data(config, image_size: int, calibration: int, check: int):
  """(calibration images or None if `calibration` is 0, check images, check
  labels) from the config's dataset at the model's input size; random images
  and no labels for synthetic data (there is nothing to calibrate int8 on then)."""
  if config is None or config.dataset == "synthetic":
    images = np.random.RandomState(0).uniform(-1, 1, (8, image_size, image_size, 3))
    return None, images.astype(np.float32), None
  from mobilenet_jax.data import datasets, input_pipeline
  config = ml_collections.ConfigDict(config.to_dict())
  config.image_size = image_size
  builder = datasets.get_builder(config)
  calib = (input_pipeline.first_examples(config, builder, config.train_split, calibration)[0]
           if calibration else None)
  images, labels = input_pipeline.first_examples(config, builder, config.eval_split, check)
  return calib, images, labels


def default_out(workdir: str, fmt: str, quantize: str) -> str:
  suffix = "_int8" if quantize == "int8" else ""
  name = f"model{suffix}.tflite" if fmt == "tflite" else f"saved_model{suffix}"
  return os.path.join(workdir, "export", name)


def export(workdir: str, fmt: str, quantize: str = "none", out: Optional[str] = None,
           config=None, calibration_examples: int = 200, check_examples: int = 1000,
           compare_keras: bool = True) -> dict:
  """Writes the export and returns its report (also written to out + .json)."""
  if fmt not in FORMATS:
    raise ConfigError(f"format {fmt!r} is not one of {FORMATS}.")
  if quantize == "int8" and fmt != "tflite":
    raise ConfigError("--quantize int8 is for --format tflite; a SavedModel stays float32.")
  out = out or default_out(workdir, fmt, quantize)
  if os.path.exists(out):
    raise ConfigError(f"{out} exists; remove it or pass another --out (nothing was changed).")
  model_config, image_size, run_config, variables = load_run(workdir)
  quantization = steps.quantization(run_config) if run_config else None
  if quantization is not None and quantize != "int8":
    raise ConfigError(f"{workdir} was trained with quantization-aware training "
                      f"(quantization={run_config.quantization!r}), which only an int8 "
                      "TFLite model honours; use --format tflite --quantize int8.")
  config = config or run_config
  calib, images, labels = data(config, image_size,
                               calibration_examples if quantize == "int8" else 0,
                               check_examples)
  if quantize == "int8" and calib is None:
    raise ConfigError("int8 needs calibration images and this run has no dataset; "
                      "pass --config with one (e.g. configs/default.py).")
  fn = inference_fn(model_config, variables)
  if quantization is not None:  # the check's reference: QAT's own evaluation
    reference = np.asarray(inference_fn(model_config, variables, quantization)(images))
    # The converter gets the float network with QAT's folded, rounded kernels
    # and measures the activations' ranges itself.
    epsilon = get_model(model_config).bn_epsilon
    fn = inference_fn(model_config, rounded_float_variables(
        variables, quantization.weights, epsilon))
  else:
    reference = np.asarray(fn(images))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  report = {"workdir": workdir, "format": fmt, "quantize": quantize, "output": out,
            "model": model_config, "image_size": image_size,
            "trained": run.quantization_name(run_config) if run_config else "none"}
  # Written under a temporary name, checked, then renamed: a failed export
  # leaves nothing half-made behind.
  if fmt == "saved_model":
    to_saved_model(fn, image_size, out + ".tmp")
    import tensorflow as tf
    served = tf.saved_model.load(out + ".tmp").signatures["serving_default"]
    logits = next(iter(served(images=images).values())).numpy()
    report["size_mb"] = directory_mb(out + ".tmp")
  else:
    per_tensor = quantization is not None and quantization.weights == "per_tensor"
    model_bytes = to_tflite(fn, image_size, calib, per_tensor)
    write(out + ".tmp", model_bytes)
    logits = tflite_logits(model_bytes, images)
    report["size_mb"] = len(model_bytes) / 2**20
    report["latency_ms_1_thread"] = tflite_latency_ms(model_bytes, image_size)
    keras_bytes = keras_tflite(model_config, image_size, calib) if compare_keras else None
    if keras_bytes is not None:
      report["keras"] = {"size_mb": len(keras_bytes) / 2**20,
                         "latency_ms_1_thread": tflite_latency_ms(keras_bytes, image_size)}
  report["check"] = agreement(reference, logits, labels)
  write(out + ".json", json.dumps(report, indent=2).encode())
  os.replace(out + ".tmp", out)
  return report


def directory_mb(path: str) -> float:
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files) / 2**20


def write(path: str, content: bytes):
  with open(path, "wb") as f:
    f.write(content)


def summary(report: dict) -> str:
  check = report["check"]
  lines = [f"wrote {report['output']} ({report['size_mb']:.2f} MB)",
           f"check on {check['examples']} evaluation images: max |export - jax| = "
           f"{check['max_abs_difference']:.2e}, top-1 agreement "
           f"{100 * check['top1_agreement']:.1f}%"]
  if "top1_export" in check:
    lines.append(f"top-1 accuracy: export {100 * check['top1_export']:.2f}%, "
                 f"jax {100 * check['top1_jax']:.2f}%")
  if "latency_ms_1_thread" in report:
    lines.append("TFLite interpreter, 1 CPU thread, batch 1:")
    lines.append(f"  {'model':<28} {'size MB':>8} {'latency ms':>11}")
    rows = [("mobilenet_jax", report)] + (
        [("Keras Applications", report["keras"])] if "keras" in report else [])
    for name, row in rows:
      lines.append(f"  {name:<28} {row['size_mb']:>8.2f} {row['latency_ms_1_thread']:>11.2f}")
    if "keras" not in report:
      lines.append("  (no Keras model of this architecture, or --nocompare_keras)")
  return "\n".join(lines)
