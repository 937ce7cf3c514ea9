"""The Keras MobileNetV2 peer of the bottleneck ablation (peers/keras_digits.py):
the network, its one change, the recipe and the batches it trains on."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from mobilenet_jax import defaults  # noqa: E402
from mobilenet_jax.tools import report  # noqa: E402
from mobilenet_jax.models import get_model  # noqa: E402
from mobilenet_jax.studies import keras_digits  # noqa: E402
from mobilenet_jax.training import optim  # noqa: E402

pytestmark = pytest.mark.xdist_group("keras_digits")

# Where each inverted-residual block without a shortcut hands its projection
# on: (block, the layer that consumes its output). Their inputs are exactly
# the projection's (activated) output.
NO_SHORTCUT = [("expanded_conv", "block_1_expand"), ("block_1", "block_2_expand"),
               ("block_3", "block_4_expand"), ("block_6", "block_7_expand"),
               ("block_10", "block_11_expand"), ("block_13", "block_14_expand"),
               ("block_16", "Conv_1")]


def project_param_count(model_config, size=32):
  model = get_model(model_config)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros((1, size, size, 3))))
  return sum(x.size for x in jax.tree.leaves(variables))


def layer_names(model):
  """(class, name) of every layer but the input; Keras numbers the names it
  makes up (the input, the pooling) per process, so those are left out."""
  return [(type(l).__name__, "" if type(l).__name__ == "GlobalAveragePooling2D"
           else l.name) for l in model.layers[1:]]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("keras_digits") / "tfds")


def digits_config(data_dir, **changes):
  config = defaults.get_config()
  config.data_dir = data_dir
  config.update(changes)
  return config


# ----------------------------------------------------------------- model ---

def test_param_counts_equal_keras_and_project():
  keras_own = keras.applications.MobileNetV2(alpha=0.5, input_shape=(32, 32, 3),
                                             classes=10, weights=None)
  linear = keras_digits.build(0.5, "linear", 10, 32)
  relu6 = keras_digits.build(0.5, "relu6", 10, 32)
  project = project_param_count(defaults.digits_model())
  assert keras_own.count_params() == 719_034
  assert linear.count_params() == keras_own.count_params() == project
  assert relu6.count_params() == keras_own.count_params()
  # Layer for layer Keras's, plus one ReLU6 per block with relu6.
  assert layer_names(linear) == layer_names(keras_own)
  keras_names = {name for _, name in layer_names(keras_own)}
  added = [l for l in relu6.layers[1:] if l.name not in keras_names
           and not isinstance(l, keras.layers.GlobalAveragePooling2D)]
  assert len(added) == 17 == len(keras_digits.projection_layers(relu6))
  assert all(isinstance(l, keras.layers.ReLU) and float(l.max_value) == 6.0
             for l in added)


@pytest.mark.parametrize("activation", ["linear", "relu6"])
def test_project_init_starts_keras_where_the_project_run_starts(activation):
  """--init project: every Keras weight is the project run's step-0 value at
  the same seed, so the two networks compute the same training-mode logits;
  Keras's own initialisers give other ones."""
  import optax
  from mobilenet_jax.training import steps
  config = defaults.get_config()
  config.seed, config.model.bottleneck_activation = 3, activation
  net = steps.create_model(config.model)
  state = steps.create_train_state(net, 32, optax.identity(), jax.random.key(3), ema=False)
  x = np.random.RandomState(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
  apply = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))
  ours, _ = apply({"params": state.params, "batch_stats": state.batch_stats}, x)
  ours = np.asarray(ours)
  assert np.abs(ours).max() > 0.1  # logits large enough to tell networks apart
  project = keras_digits.build_from_config(config, init="project")
  assert len(project.trainable_variables) == len(jax.tree.leaves(state.params))
  # Not to the last bit: the frameworks compute batch statistics differently.
  np.testing.assert_allclose(np.asarray(project(x, training=True)), ours, atol=5e-3)
  keras_init = keras_digits.build_from_config(config)
  assert np.abs(np.asarray(keras_init(x, training=True)) - ours).max() > 0.1


def test_bn_momentum_epsilon_and_dropout_are_set():
  model = keras_digits.build(0.5, "linear", 10, 32, bn_momentum=0.9, dropout=0.3,
                             bn_epsilon=2e-3)
  bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert len(bns) == 52 and {(l.momentum, l.epsilon) for l in bns} == {(0.9, 2e-3)}
  assert [type(l).__name__ for l in model.layers[-3:]] == [
      "GlobalAveragePooling2D", "Dropout", "Dense"]
  assert model.get_layer("dropout").rate == 0.3
  assert "dropout" not in [l.name for l in keras_digits.build(0.5, "linear").layers]


def probe(model, names):
  """The inputs of the named layers, for one batch of random images."""
  outputs = [model.get_layer(n).input for n in names]
  x = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
  return [np.asarray(y) for y in keras.Model(model.input, outputs)(x, training=True)]


def test_relu6_bounds_what_follows_each_projection():
  keras.utils.set_random_seed(0)
  relu6 = keras_digits.build(0.5, "relu6")
  keras.utils.set_random_seed(0)
  linear = keras_digits.build(0.5, "linear")
  # Same weights (same seed): the variants differ in function only.
  for a, b in zip(relu6.get_weights(), linear.get_weights()):
    np.testing.assert_array_equal(a, b)
  consumers = [c for _, c in NO_SHORTCUT]
  for y in probe(relu6, consumers):
    assert y.min() >= 0 and y.max() <= 6 and y.max() > 0
  assert all(y.min() < 0 for y in probe(linear, consumers))
  # Each projection BN feeds its ReLU6 (BN outputs themselves go negative),
  # and the shortcut blocks add the activated projection to their input.
  relus = [f"{p.name[:-3]}_relu" for p in keras_digits.projection_layers(relu6)]
  for y in probe(relu6, relus):
    assert y.min() < 0
  add = relu6.get_layer("block_2_add")
  assert add.input[1] is relu6.get_layer("block_2_project_relu").output
  x = np.random.default_rng(1).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  assert not np.allclose(relu6(x, training=True), linear(x, training=True))


# -------------------------------------------------------------- the recipe ---

@pytest.mark.slow
def test_weight_decay_mask_and_update_match_the_project():
  config = defaults.get_config()
  config.weight_decay, config.warmup_epochs, config.learning_rate = 0.1, 0.0, 0.5
  model = keras_digits.build_from_config(config)
  paths = keras_digits.project_paths(model, config.model, 32)
  mask = keras_digits.decayed(model, config)
  project = get_model(config.model)
  params = jax.eval_shape(lambda: project.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]
  flat = {"/".join(str(k.key) for k in path): m for path, m in
          jax.tree_util.tree_flatten_with_path(optim.decay_mask(params, config.no_decay))[0]}
  assert sorted(paths.values()) == sorted(flat)  # every parameter, once
  assert all(mask[k] == flat[v] for k, v in paths.items())
  assert not mask["block_1_depthwise/kernel"] and not mask["bn_Conv1/gamma"]
  assert not mask["bn_Conv1/beta"] and not mask["predictions/bias"]
  assert mask["block_1_expand/kernel"] and mask["predictions/kernel"]

  # One update with zero gradients inside tf.function: Adam moves nothing,
  # decoupled decay multiplies the decayed weights by 1 - lr * wd.
  opt = keras_digits.create_optimizer(model, config, per_epoch=10, num_steps=100)
  before = {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables}

  @tf.function(jit_compile=False)
  def step():
    opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
  step()
  for v in model.trainable_variables:
    factor = 1 - 0.5 * 0.1 if mask[v.path] else 1.0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(v), before[v.path] * factor,
                               rtol=1e-6, err_msg=v.path)


def test_learning_rate_follows_the_project_schedule():
  config = defaults.get_config()
  model = keras_digits.build_from_config(config)
  per_epoch, steps = 22, 1320
  opt = keras_digits.create_optimizer(model, config, per_epoch, steps)
  schedule = optim.create_schedule(config, per_epoch, steps)
  for s in (0, 1, 43, 44, 45, 700, 1319):
    opt.iterations.assign(s)
    np.testing.assert_allclose(float(opt.learning_rate), float(schedule(s)),
                               rtol=1e-6, atol=1e-9, err_msg=str(s))
  assert float(schedule(0)) == 0.0 and float(schedule(44)) == pytest.approx(3e-3)


# -------------------------------------------------------------- training ---

@pytest.mark.slow
def test_three_steps_on_the_projects_batches(data_dir, tmp_path):
  from mobilenet_jax.data import datasets, input_pipeline
  # 0.1 epoch of 22 steps: ceil(2.2) = 3 steps, as the project counts them.
  config = digits_config(data_dir, num_epochs=0.1, eval_every_steps=2)
  config.model.bottleneck_activation = "relu6"
  seen = []
  workdir = str(tmp_path / "run")
  results = keras_digits.train(config, workdir,
                               on_step=lambda s, b, loss: seen.append((s, b, loss)))

  builder = datasets.get_builder(config)
  expected = list(input_pipeline.train_batches(config, builder, [0], 1, 64, 0, 3,
                                               workers=0))
  assert [s for s, _, _ in seen] == [1, 2, 3]
  for (_, batch, _), want in zip(seen, expected):
    np.testing.assert_array_equal(batch["label"], want["label"])
    np.testing.assert_array_equal(batch["image"], want["image"])
  # The model trained on them: the first two losses are those of the seed's
  # initial weights on batches 0 and 1 (the warm-up's first rate is 0).
  fresh = keras_digits.build_from_config(config)
  loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
  for (_, _, loss), want in zip(seen[:2], expected[:2]):
    logits = fresh(want["image"], training=True)
    assert loss == pytest.approx(float(loss_fn(tf.one_hot(want["label"], 10), logits)),
                                 rel=1e-4)

  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(results))
  assert [h["step"] for h in on_disk["history"]] == [2, 3]
  assert on_disk["steps"] == 3 and on_disk["global_batch_size"] == 64
  assert on_disk["eval_count"] == 360 == input_pipeline.num_examples(builder, "test")
  assert on_disk["params"] == 719_034 and on_disk["madds"] > 0
  assert on_disk["config"]["model"]["name"] == "keras_mobilenet_v2"
  assert on_disk["config"]["model"]["bottleneck_activation"] == "relu6"
  assert on_disk["device_kind"] == "cpu (Keras)" and on_disk["num_devices"] == 1

  sweep = str(tmp_path)
  os.makedirs(os.path.join(sweep, "relu6"))
  os.rename(workdir, os.path.join(sweep, "relu6", "seed_0"))
  runs, problems = report.load_runs(sweep, ["relu6"])
  assert not problems and runs["relu6"][0]["eval_top1"] == on_disk["eval_top1"]

  # A finished run is not run again.
  again = keras_digits.train(config, os.path.join(sweep, "relu6", "seed_0"),
                             on_step=lambda *a: pytest.fail("trained again"))
  assert again["eval_top1"] == on_disk["eval_top1"]


def test_eval_sums_count_each_example_once():
  logits = np.array([[3.0, 1, 0, 0, 0, 0], [0, 3.0, 1, 0, 0, 0], [9.0, 0, 0, 0, 0, 0]])
  sums = keras_digits.eval_sums(logits, np.array([0, 2, 5]), np.array([1.0, 1.0, 0.0]))
  assert sums["count"] == 2 and sums["top1"] == 1 and sums["top5"] == 2
  log_p = logits[:2] - np.log(np.exp(logits[:2]).sum(-1, keepdims=True))
  assert sums["loss"] == pytest.approx(-(log_p[0, 0] + log_p[1, 2]))


@pytest.mark.slow
def test_sweep_command_writes_a_report(data_dir, tmp_path):
  workdir = str(tmp_path / "sweep")
  keras_digits.main(["--workdir", workdir, "--variants", "linear,relu6",
                     "--seeds", "0", "--num_train_steps", "1",
                     "--data_dir", data_dir, "--out", str(tmp_path / "report")])
  with open(os.path.join(workdir, "sweep.json")) as f:
    record = json.load(f)
  assert record["name"] == "keras_bottleneck_activation"
  assert record["variants"] == ["linear", "relu6"] and record["seeds"] == [0]
  assert record["plot"] == "curves" and "keras_digits" in record["command"]
  for v in ("linear", "relu6"):
    with open(os.path.join(workdir, v, "seed_0", "results.json")) as f:
      assert json.load(f)["config"]["model"]["bottleneck_activation"] == v
  text = (tmp_path / "report" / "report.md").read_text()
  assert "| linear | 719,034 |" in text and "| relu6 | 719,034 |" in text
