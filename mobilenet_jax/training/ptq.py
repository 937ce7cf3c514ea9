"""Post-training int8 quantization of a trained float network, evaluated.

What TFLite's converter does with a representative dataset, simulated as
ops/quantize.py simulates int8 (the same folding, rounding and ranges as
QAT): the weights rounded with per-channel or per-tensor scales, and each
activation's range the min/max over `config.ptq_calibration_examples`
training images preprocessed as for evaluation (the export command calibrates
on the same images). `config.ptq_eval` asks for it at the end of a run; the
results gain eval_top1_ptq_<scales> and its loss and top-5.
"""

import functools
from typing import Dict

import flax
import jax
import numpy as np

from mobilenet_jax import parallel
from mobilenet_jax.training import steps


def calibration_images(config, builder) -> np.ndarray:
  from mobilenet_jax.data import input_pipeline
  return input_pipeline.first_examples(config, builder, config.train_split,
                                       config.ptq_calibration_examples)[0]


def with_ranges(model, image_size: int, batch_stats) -> dict:
  """`batch_stats` of the float network plus the quantized one's (unset)
  activation ranges."""
  _, fresh = steps.initialize(model, image_size, jax.random.key(0))
  flat = flax.traverse_util.flatten_dict(fresh, sep="/")
  flat.update(flax.traverse_util.flatten_dict(jax.device_get(batch_stats), sep="/"))
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def calibrate(config, weights: str, params, batch_stats, images: np.ndarray,
              batch_size: int) -> dict:
  """The batch statistics with every activation range measured on `images`."""
  model = steps.create_model(config.model, quantization=steps.quantization(
      config, weights, calibrating=True))
  stats = with_ranges(model, config.image_size, batch_stats)
  params = jax.device_get(params)

  @jax.jit
  def observe(stats, batch):
    _, updates = model.apply({"params": params, "batch_stats": stats}, batch,
                             train=False, mutable=["batch_stats"])
    return updates["batch_stats"]

  for start in range(0, len(images), batch_size):
    stats = observe(stats, images[start:start + batch_size])
  return stats


def evaluate(job, state, evaluate_fn) -> Dict[str, float]:
  """{eval_top1_ptq_<scales>: ..., ...} for each of config.ptq_eval, with
  `evaluate_fn` the loop's evaluation (eval_fn, state, config, builder, mesh)."""
  config, mesh = job.config, job.mesh
  images = calibration_images(config, job.builder)
  out = {}
  for weights in config.ptq_eval:
    stats = calibrate(config, weights, state.params, state.batch_stats, images,
                      config.eval_per_device_batch_size)
    model = steps.create_model(config.model, quantization=steps.quantization(config, weights))
    eval_fn = parallel.data_parallel(functools.partial(steps.eval_step, model=model), mesh)
    quantized = state.replace(batch_stats=parallel.replicate(stats, mesh))
    result = evaluate_fn(eval_fn, quantized, _without_ema(config), job.builder, mesh)
    out.update({f"{k}_ptq_{weights}": v for k, v in result.items()})
  return out


def _without_ema(config):
  """The config as evaluate reads it, without the EMA weights (PTQ
  quantizes the raw weights)."""
  config = config.copy_and_resolve_references()
  config.ema_decay = 0.0
  return config
