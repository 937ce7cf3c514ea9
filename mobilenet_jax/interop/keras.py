"""Keras Applications MobileNet / MobileNetV2 weights -> Flax variables.

Keras and this project build the networks layer for layer in the same order
(conv, batch norm, ..., classifier), so weights are paired in that order and
every pair is checked by shape. Only this module imports Keras.
"""

import os
from typing import Any, Dict, List, Tuple

import flax
import jax
import numpy as np

from mobilenet_jax.errors import ConfigError


def keras_layers(keras_model) -> List[Tuple[str, str, List[np.ndarray]]]:
  """(name, kind, weights) of every Keras layer that holds weights."""
  out = []
  for layer in keras_model.layers:
    weights = [np.asarray(w) for w in layer.get_weights()]
    if not weights:
      continue
    kind = type(layer).__name__
    if kind not in ("Conv2D", "DepthwiseConv2D", "BatchNormalization", "Dense"):
      raise ConfigError(f"Keras layer {layer.name} ({kind}) has no counterpart "
                        "in a MobileNet V1/V2.")
    out.append((layer.name, kind, weights))
  return out


# The order in which the networks run their layers; pytrees sort dict keys, so
# the call order is rebuilt from the names.
ORDER = {"stem": 0, "block": 1, "head": 2, "classifier": 3,
         "expand": 0, "depthwise": 1, "project": 2, "pointwise": 2,
         "conv": 0, "bn": 1}


def call_order(path: str):
  key = []
  for part in path.split("/"):
    name, _, index = part.rpartition("_") if part.startswith("block_") else (part, "", "0")
    key += [ORDER[name], int(index)]
  return key


def flax_slots(variables) -> List[Tuple[str, str]]:
  """(path, kind) of each conv, BN and dense of a Flax model, in call order."""
  slots = []
  def visit(tree, path):
    if "kernel" in tree:
      slots.append((path, "dense" if path.endswith("classifier") else "conv"))
    elif "scale" in tree:
      slots.append((path, "bn"))
    else:
      for key, sub in tree.items():
        visit(sub, f"{path}/{key}" if path else key)
  visit(flax.core.unfreeze(variables["params"]), "")
  return sorted(slots, key=lambda slot: call_order(slot[0]))


def convert_kernel(kind: str, w: np.ndarray, target_shape) -> np.ndarray:
  if kind == "DepthwiseConv2D":  # (k, k, C, m) -> (k, k, 1, C * m), order c*m + m'
    k1, k2, c, m = w.shape
    w = w.reshape(k1, k2, 1, c * m)
  elif w.ndim == 4 and len(target_shape) == 2:  # V1's 1x1 conv classifier
    w = w.reshape(w.shape[-2], w.shape[-1])
  return w


def load_keras_weights(keras_model, variables) -> Dict[str, Any]:
  """Returns `variables` (same tree) filled with the Keras model's weights.

  Raises ConfigError naming the first layer whose shape does not match, for
  a Keras model of another architecture, alpha or class count.
  """
  params = flax.core.unfreeze(variables["params"])
  stats = flax.core.unfreeze(variables.get("batch_stats", {}))
  source, slots = keras_layers(keras_model), flax_slots(variables)
  if len(source) != len(slots):
    raise ConfigError(
        f"the Keras model {keras_model.name} has {len(source)} weighted layers "
        f"but this config builds {len(slots)}: a different architecture "
        "(model name, shallow, conv_type, blocks or include_top).")

  def put(tree, path, key, value):
    node = subtree(tree, path)
    if tuple(node[key].shape) != tuple(value.shape):
      raise ConfigError(
          f"Keras layer {name} has shape {tuple(value.shape)} where {path}/{key} "
          f"needs {tuple(node[key].shape)}: a different alpha, depth "
          "multiplier, expansion or num_classes.")
    node[key] = jax.numpy.asarray(value, node[key].dtype)

  for (name, kind, weights), (path, slot) in zip(source, slots):
    if slot == "bn":
      if kind != "BatchNormalization":
        raise ConfigError(f"Keras layer {name} ({kind}) sits where {path} "
                          "expects batch norm: a different architecture.")
      gamma, beta, mean, var = weights
      put(params, path, "scale", gamma)
      put(params, path, "bias", beta)
      put(stats, path, "mean", mean)
      put(stats, path, "var", var)
    else:
      target = subtree(params, path)["kernel"].shape
      put(params, path, "kernel", convert_kernel(kind, weights[0], target))
      if len(weights) > 1:
        put(params, path, "bias", weights[1])
  return {"params": params, "batch_stats": stats}


def subtree(tree, path: str):
  """tree["a"]["b"] for path "a/b" (a Flax module path)."""
  for part in path.split("/"):
    tree = tree[part]
  return tree


# ------------------------------------------------------ whole models -------

def keras_model_config(keras_model) -> Dict[str, Any]:
  """This project's model config for a Keras Applications MobileNet or
  MobileNetV2: name and alpha from the Keras model's name (Keras writes
  "mobilenet_{alpha:.2f}_{size}" / "mobilenetv2_{alpha:.2f}_{size}"), depth
  multiplier, top and class count from its layers."""
  parts = keras_model.name.split("_")
  kinds = {"mobilenet": "mobilenet_v1", "mobilenetv2": "mobilenet_v2"}
  try:
    name, alpha = kinds[parts[0]], float(parts[1])
  except (KeyError, IndexError, ValueError):
    raise ConfigError(
        f"the Keras model {keras_model.name!r} is not a Keras Applications "
        "MobileNet or MobileNetV2 (their names are mobilenet_<alpha>_<size> and "
        "mobilenetv2_<alpha>_<size>); load its weights with load_keras_weights "
        "into a model you configure.") from None
  layers = keras_layers(keras_model)
  config = {"name": name, "alpha": alpha}
  top = [w for (_, kind, w) in layers if kind == "Dense"] or (
      [layers[-1][2]] if name == "mobilenet_v1" and layers[-1][0] == "conv_preds" else [])
  config["include_top"] = bool(top)
  if top:
    config["num_classes"] = int(top[0][0].shape[-1])
  if name == "mobilenet_v1":
    first_depthwise = next(w for (_, kind, w) in layers if kind == "DepthwiseConv2D")
    config["depth_multiplier"] = int(first_depthwise[0].shape[-1])
  return config


def from_keras(keras_model):
  """(Flax module, variables) equal to a Keras Applications MobileNet or
  MobileNetV2, for inference or as the start of training."""
  from mobilenet_jax.models import get_model
  config = keras_model_config(keras_model)
  model = get_model(config)
  size = keras_model.input_shape[1] or 224
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jax.numpy.zeros((1, size, size, 3))))
  return model, load_keras_weights(keras_model, shapes)


def from_keras_file(path: str, name: str = None, alpha: float = None,
                    image_size: int = 224, num_classes: int = 1000,
                    include_top: bool = True):
  """from_keras for a saved file: a whole `.keras` model, or a weights file
  (`.h5`, `.weights.h5`) together with the architecture's name and alpha.

  A file of another architecture or alpha is a ConfigError that says so.
  """
  return from_keras(load_keras_file(path, name, alpha, image_size, num_classes,
                                    include_top))


def load_keras_file(path: str, name: str = None, alpha: float = None,
                    image_size: int = 224, num_classes: int = 1000,
                    include_top: bool = True):
  """The Keras model of a `.keras` file, or a Keras Applications model of
  `name` and `alpha` holding the weights of an `.h5` file."""
  import keras
  if not os.path.exists(path):
    raise ConfigError(f"{path} does not exist; give a .keras, .h5 or .weights.h5 file.")
  if path.endswith(".keras"):
    return keras.models.load_model(path, compile=False)
  if name is None or alpha is None:
    raise ConfigError(f"{path} holds weights only: give the model name "
                      "(mobilenet_v1 or mobilenet_v2) and its alpha.")
  keras_model = keras_application(name, alpha, image_size, num_classes, include_top)
  try:
    keras_model.load_weights(path)
  except (ValueError, KeyError) as e:
    raise ConfigError(
        f"{path} does not fit a Keras {name} with alpha {alpha}, "
        f"{num_classes} classes, include_top={include_top} "
        f"({str(e).splitlines()[0][:200]}); check the architecture and alpha "
        "the file was saved with.") from None
  return keras_model


def keras_application(name: str, alpha: float, image_size: int, num_classes: int,
                      include_top: bool = True, depth_multiplier: int = 1):
  """A Keras Applications MobileNet (V1) or MobileNetV2 with random weights
  and logits out."""
  import keras
  extra = {"depth_multiplier": depth_multiplier} if name == "mobilenet_v1" else {}
  build = {"mobilenet_v1": keras.applications.MobileNet,
           "mobilenet_v2": keras.applications.MobileNetV2}[name]
  return build(weights=None, alpha=alpha, classes=num_classes, include_top=include_top,
               classifier_activation=None, input_shape=(image_size, image_size, 3),
               **extra)


def keras_counterpart(model_config: Dict[str, Any], image_size: int):
  """keras_application of the same network as `model_config`, or None for
  an ablation variant Keras does not build (shallow, ReLU bottlenecks, ...)."""
  from mobilenet_jax.models import architecture, get_model
  plain = {k: model_config[k] for k in ("name", "alpha", "num_classes", "include_top")}
  if model_config["name"] == "mobilenet_v1":
    plain["depth_multiplier"] = model_config.get("depth_multiplier", 1)
  if architecture(get_model(model_config)) != architecture(get_model(plain)):
    return None
  return keras_application(image_size=image_size, **plain)


# -------------------------------------------------- to a checkpoint -------

def max_abs_difference(keras_model, model, variables, image_size: int) -> float:
  """Largest difference of Keras' and the converted model's outputs on a
  random batch (softmax outputs if the Keras model ends in a softmax)."""
  x = np.random.RandomState(0).uniform(-1, 1, (2, image_size, image_size, 3)).astype(np.float32)
  ours = model.apply(variables, x, train=False)
  last = getattr(keras_model.layers[-1], "activation", None)
  if getattr(last, "__name__", "") == "softmax":
    ours = jax.nn.softmax(ours)
  return float(np.max(np.abs(np.asarray(keras_model(x, training=False)) - np.asarray(ours))))


def convert_to_checkpoint(path: str, config, out: str) -> float:
  """Writes the Keras file's weights for `config`'s model as a checkpoint in
  `out` (for --config.init_from and export); returns the largest output
  difference between the Keras model and the converted one."""
  from mobilenet_jax.models import get_model
  from mobilenet_jax.training import checkpoint, run
  m = config.model
  keras_model = load_keras_file(path, m.name, m.alpha, config.image_size,
                                m.num_classes, m.include_top)
  model, variables = from_keras(keras_model)
  run.check_same_architecture(model, get_model(config.model), path)
  diff = max_abs_difference(keras_model, model, variables, config.image_size)
  checkpoint.save_weights(out, variables, config, source=os.path.abspath(path),
                          keras_max_abs_difference=diff)
  return diff
