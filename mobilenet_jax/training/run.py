"""A run's identity and metadata: the one home for what makes two runs the same.

Three questions, answered here and nowhere else:
  - Same architecture? `models.architecture`: the knobs that decide the
    function computed and the parameters. Weights move between any two runs
    that agree on it (`config.init_from`, `convert`, `export`), whatever their
    dropout, BN momentum, recipe or data.
  - Resumable? A checkpoint continues only under a config with the same
    `identity`: every knob of `config.model` (the architecture plus dropout and
    BN momentum, which would change the rest of the run) and the image size.
    Everything else may differ on resume: the schedule length (num_epochs,
    num_train_steps), logging, evaluation and checkpoint cadence, eval_only,
    data_dir. A changed optimizer or learning rate is not refused either: it
    makes a different run, as it would in any trainer that resumes from state.
  - What does a checkpoint say about itself? `meta`, saved beside every
    checkpoint: identity, the whole config, the training history and time, and
    for converted weights `kind: "weights"` and where they came from.
"""

import json
from typing import Any, Dict

from mobilenet_jax import models
from mobilenet_jax.errors import ConfigError

WEIGHTS = "weights"  # meta["kind"] of a checkpoint that holds only variables
MODEL_PREFIX = "model."


def as_json(tree):
  """`tree` as JSON gives it back (tuples become lists): what meta stores."""
  return json.loads(json.dumps(tree))


def model_section(model_config) -> Dict[str, Any]:
  """config.model with every knob, module defaults filled in."""
  given = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
  section = models.default_config(given["name"])
  section.update(given)
  return section


def identity(config) -> Dict[str, Any]:
  """What a checkpoint must agree on to be resumed by `config`, flat and as
  JSON stores it: {"model.<knob>": value, ..., "image_size": size}."""
  flat = {MODEL_PREFIX + k: v for k, v in model_section(config.model).items()}
  flat["image_size"] = config.image_size
  if config.get("quantization", "none") != "none":  # float runs keep their identity
    flat["quantization"] = quantization_name(config)
  return as_json(flat)


def quantization_name(config) -> str:
  """"none", or e.g. "int8 per_channel" (weights only: "... weights")."""
  if config.get("quantization", "none") == "none":
    return "none"
  what = "" if config.quantize_activations else " weights"
  return f"{config.quantization} {config.quantize_weights}{what}"


def model_config(meta: dict) -> Dict[str, Any]:
  """The model section a checkpoint was written with (what export builds)."""
  return {k[len(MODEL_PREFIX):]: v for k, v in meta["identity"].items()
          if k.startswith(MODEL_PREFIX)}


def image_size(meta: dict) -> int:
  return meta["identity"]["image_size"]


def new_meta(config) -> dict:
  """The metadata of a run that starts now."""
  return {"identity": identity(config), "history": [], "train_time_s": 0.0,
          "config": as_json(config.to_dict())}


def weights_meta(config, **extra) -> dict:
  """The metadata of converted weights: never resumed as a run."""
  return {"identity": identity(config), "config": as_json(config.to_dict()),
          "kind": WEIGHTS, **extra}


def describe_difference(saved: dict, wanted: dict) -> str:
  keys = sorted(set(saved) | set(wanted))
  return ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} here"
                   for k in keys if saved.get(k) != wanted.get(k))


def check_resumable(meta: dict, config, workdir: str):
  """Raises ConfigError unless `config` may resume the run `meta` describes."""
  if meta.get("kind") == WEIGHTS:
    raise ConfigError(
        f"{workdir} holds converted weights, not a training run; start from "
        f"them with --config.init_from={workdir} and a new --workdir.")
  wanted = identity(config)
  if meta.get("identity") != wanted:
    raise ConfigError(
        f"the workdir {workdir} holds a checkpoint of a different model "
        f"({describe_difference(meta.get('identity', {}), wanted)}); "
        "use a new --workdir, or delete its checkpoints/ to start over.")


def check_same_architecture(have, want, source: str):
  """Raises ConfigError unless the built models `have` (from `source`) and
  `want` (the config's) compute the same function with the same parameters."""
  if type(have) is not type(want):
    saved, wanted = {"model": type(have).__name__}, {"model": type(want).__name__}
  else:
    saved, wanted = models.architecture(have), models.architecture(want)
  if saved != wanted:
    raise ConfigError(f"{source} is not the config's model "
                      f"({describe_difference(saved, wanted)}); pass the config of "
                      "the architecture it was saved with. Nothing was written.")
