"""The trainer: real loops on mock ImageNet and the digits, data parallelism
over 1 and 4 devices, exact resume after SIGKILL, and errors for people."""

import functools
import json
import os
import runpy
import signal
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow_datasets as tfds
import pytest

from configs import default, mobilenet_v2
from mobilenet_jax import defaults, parallel
from mobilenet_jax.training import checkpoint, loop, optim, run, steps
from mobilenet_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(config, **overrides):
  config.model.alpha = 0.25
  config.image_size = 32
  config.per_device_batch_size = 2
  config.eval_per_device_batch_size = 2
  config.log_every_steps = 1
  for key, value in overrides.items():
    config[key] = value
  return config


SMALL_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2))  # fast to compile


@pytest.mark.slow
def test_imagenet_config_trains_on_imagenet_like_jpegs(tmp_path):
  """The ImageNet recipe (Inception crop, central crop, 1000 classes) on
  generated ImageNet-sized JPEGs: 40 train, 10 validation."""
  config = tiny(mobilenet_v2.get_config("0.25_32"), num_train_steps=3,
                eval_every_steps=3, checkpoint_every_steps=3)
  config.model.blocks = SMALL_BLOCKS
  config.update(dataset="imagenet_like/n40", data_dir=str(tmp_path / "tfds"))
  results = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["num_devices"] == 4 and results["global_batch_size"] == 8
  assert results["eval_count"] == 10  # 10 examples over batches of 8: padded, counted once
  assert results["eval_count_ema"] == 10
  for key in ("eval_top1", "eval_top5", "eval_loss", "eval_top1_ema", "madds", "params"):
    assert np.isfinite(results[key])
  on_disk = json.load(open(tmp_path / "run" / "results.json"))
  assert on_disk["steps"] == 3 and len(on_disk["history"]) == 1
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "run"))
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "3" / "input")


def trainer(config, devices, sync_bn, tx=optax.sgd(0.03), state=None):
  """A function batch -> state after `steps` steps from `state` (default: init)."""
  mesh = parallel.create_mesh(devices)
  model = steps.create_model(config.model, config.dtype, config.depthwise_impl, sync_bn)
  if state is None:
    state = initial_state(config, tx)
  step = parallel.data_parallel(
      functools.partial(steps.train_step, model=model, tx=tx,
                        label_smoothing=config.label_smoothing, ema_decay=config.ema_decay),
      mesh)
  state = parallel.replicate(state, mesh)

  def run(batch, n=2):
    s, losses = state, []
    for _ in range(n):
      s, metrics = step(s, parallel.shard_batch(batch, mesh))
      losses.append(float(metrics["loss"]))
    return jax.device_get(s), losses
  return run


def initial_state(config, tx, seed=0):
  _, eval_model = steps.config_models(config)
  return steps.create_train_state(eval_model, config.image_size, tx, jax.random.key(seed),
                                  ema=config.ema_decay > 0)


def batch_of(n, seed=0, size=32):
  rng = np.random.default_rng(seed)
  return {"image": rng.standard_normal((n, size, size, 3)).astype(np.float32),
          "label": rng.integers(0, 10, n)}


def small_config(image_size=32):
  config = tiny(default.get_config(), label_smoothing=0.0, image_size=image_size)
  config.model.blocks = SMALL_BLOCKS
  return config


def assert_bit_identical(a, b):
  """Every leaf of two states equal, PRNG keys by their data."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(x, y)


def max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_loss_goes_down_on_a_repeated_batch_in_bfloat16():
  config = small_config()
  config.dtype = "bfloat16"  # compute in bf16, keep parameters in float32
  state, losses = trainer(config, jax.devices(), True, tx=optax.adam(3e-3))(batch_of(16), n=8)
  assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}


# A small net on noise is chaotic: a 1e-6 relative change of the weights
# grows ~40x in two steps, so the tests take two small steps at 64 px,
# where the parameters move by ~1e-2, and allow 1e-4.
@pytest.mark.slow
def test_data_parallel_batch_norm_1_vs_4_devices():
  config = small_config(64)
  mixed = batch_of(16, seed=2, size=64)
  quarter = batch_of(4, seed=1, size=64)
  same = jax.tree.map(lambda x: np.concatenate([x] * 4), quarter)
  devices = jax.devices()
  start = jax.device_get(initial_state(config, optax.sgd(0.03)))

  sync = trainer(config, devices, True, state=start)
  local = trainer(config, devices, False, state=start)
  one, _ = trainer(config, devices[:1], True, state=start)(mixed)
  four, _ = sync(mixed)
  assert max_diff(one.params, start.params) > 5e-3
  # Synchronised BN: 4 devices compute what 1 device does on the whole batch.
  assert max_diff(one.params, four.params) < 1e-4
  assert max_diff(one.batch_stats, four.batch_stats) < 1e-4
  # Per-replica BN normalises each device's quarter with its own statistics.
  assert max_diff(four.params, local(mixed)[0].params) > 1e-3
  # ... which are the whole batch's when every replica sees the same data.
  assert max_diff(sync(same)[0].params, local(same)[0].params) < 1e-4


@pytest.mark.slow
def test_several_steps_per_call_are_the_steps_one_at_a_time():
  """parallel.data_parallel(steps=3) over 4 devices: one call (a scan over
  the stacked batches) ends in the state, bit for bit, and with the losses
  that three calls of one step give, EMA and dropout's RNG included."""
  config = small_config()
  config.ema_decay = 0.9
  config.model.dropout = 0.2
  model = steps.create_model(config.model, config.dtype, config.depthwise_impl)
  tx = optax.adam(3e-3)
  mesh = parallel.create_mesh(jax.devices())
  step_fn = functools.partial(steps.train_step, model=model, tx=tx, label_smoothing=0.1,
                              ema_decay=config.ema_decay)
  start = initial_state(config, tx)
  batches = [batch_of(8, seed) for seed in range(3)]
  one = parallel.data_parallel(step_fn, mesh)
  state, losses = parallel.replicate(start, mesh), []
  for batch in batches:
    state, metrics = one(state, parallel.shard_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  stacked = jax.tree.map(lambda *x: np.stack(x), *batches)
  three = parallel.data_parallel(step_fn, mesh, steps=3)
  called, metrics = three(parallel.replicate(start, mesh),
                          parallel.shard_batch(stacked, mesh, stacked=True))
  assert metrics["loss"].shape == (3,) and losses[0] != losses[-1]
  np.testing.assert_array_equal(np.asarray(metrics["loss"]), np.float32(losses))
  assert int(called.step) == 3
  assert_bit_identical(jax.device_get(state), jax.device_get(called))


def calls(first, last, per_call, intervals):
  """The (start, size) of the calls that run steps first .. last."""
  out, step = [], first
  while step <= last:
    out.append((step, loop.call_size(step, per_call, last, intervals)))
    step += out[-1][1]
  return out


def test_calls_of_several_steps_end_at_every_log_eval_and_save():
  """4 steps a call where a block of the grid 1, 5, 9, ... holds no log,
  eval or save before its last step; single steps elsewhere. A resumed run,
  which starts where a call ended, makes the same calls from there."""
  got = calls(1, 30, 4, (10, 20, 500))
  assert got == [(1, 4), (5, 4), (9, 1), (10, 1), (11, 1), (12, 1), (13, 4), (17, 4),
                 (21, 4), (25, 4), (29, 1), (30, 1)]
  ends = {start + size - 1 for start, size in got}
  assert {10, 20, 30} <= ends
  for start, _ in got:
    assert calls(start, 30, 4, (10, 20, 500)) == [c for c in got if c[0] >= start]
  assert set(calls(1, 12, 1, (5,))) == {(s, 1) for s in range(1, 13)}
  assert calls(1, 8, 4, (4, 8)) == [(1, 4), (5, 4)]  # events at call ends: whole calls


def test_steps_per_call_is_4_on_cpu_unless_set():
  mesh = parallel.create_mesh(jax.devices()[:1])
  assert parallel.steps_per_call(0, mesh) == parallel.CPU_STEPS_PER_CALL == 4
  assert parallel.steps_per_call(2, mesh) == 2
  config = default.get_config()
  config.steps_per_call = -1
  with pytest.raises(ConfigError, match="steps_per_call"):
    defaults.validate(config)


# ---------------------------------------------------------------- input ---

def test_digits_build_offline_and_batches_depend_only_on_seed_step_and_shard(tmp_path):
  """The README run's input: the embedded digits, built here with no network
  (every fifth digit is the test split), preprocessed to the config's size in
  [-1, 1]. Training batches, real and synthetic, are functions of (seed, step,
  shard): exact resume and 2 x 2 = 1 x 4 devices rest on that."""
  from sklearn.datasets import load_digits
  from mobilenet_jax.data import datasets, input_pipeline, synthetic
  config = default.get_config()
  config.data_dir = str(tmp_path / "tfds")  # built here, not found in a cache
  size = config.image_size
  builder = datasets.get_builder(config)
  images, labels = input_pipeline.first_examples(config, builder, config.eval_split, 10_000)
  assert images.shape == (360, size, size, 3)
  assert -1 <= images.min() < 0 < images.max() <= 1
  np.testing.assert_array_equal(np.bincount(labels), np.bincount(load_digits().target[::5]))

  def check(batches):
    """batches(shards, start_step) -> iterator of {"image", "label"}, 4 per shard."""
    stream = batches([0, 1], 0)
    first, second = next(stream), next(stream)
    assert first["image"].shape == (8, size, size, 3)
    np.testing.assert_array_equal(next(batches([1], 0))["image"], first["image"][4:])
    np.testing.assert_array_equal(next(batches([0, 1], 1))["image"], second["image"])
    assert not np.array_equal(first["image"], second["image"])

  check(lambda shards, start: input_pipeline.train_batches(config, builder, shards, 2, 4,
                                                             start))
  check(lambda shards, start: synthetic.train_batches(config, shards, 4, start))


# ----------------------------------------------------- main, as a process ---

def main(workdir, config_file, *overrides, wait=True, devices=1):
  args = [sys.executable, "-m", "mobilenet_jax.main", "--config", config_file,
          "--workdir", str(workdir), *overrides]
  # One CPU device unless asked: the same loop, compiled in a third of the time.
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)
  if not wait:
    return proc
  out, err = proc.communicate(timeout=600)
  return proc.returncode, err


# Three calls of 4 steps each (on CPU): resuming is checked on the calls the
# trainer makes by default.
RESUME = ["--config.num_train_steps=12", "--config.checkpoint_every_steps=4",
          "--config.ema_decay=0.9",
          "--config.eval_every_steps=4", "--config.log_every_steps=4"]


def final_state(workdir):
  return checkpoint.restore_on_one_device(str(workdir))[0]


def assert_same_run(straight, resumed):
  assert_bit_identical(final_state(straight), final_state(resumed))
  ra = json.load(open(straight / "results.json"))
  rb = json.load(open(resumed / "results.json"))
  assert ra["history"] == rb["history"] and len(ra["history"]) == 3
  assert ra["eval_top1"] == rb["eval_top1"]


def kill_after_checkpoint(workdir, config_file, overrides, step=4):
  proc = main(workdir, config_file, *overrides, wait=False)
  deadline = time.time() + 300
  while not os.path.isdir(workdir / "checkpoints" / str(step)) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  # Its input workers die with it: nothing keeps the output pipes open.
  proc.communicate(timeout=60)
  assert not os.path.exists(workdir / "results.json")  # it died mid-run


# 10 examples in batches of 4: the checkpoint at step 4 is mid-epoch (the
# 17th example of 30) and the resumed run crosses two epoch boundaries.
EPOCHS = ["--config.train_split=train[:10]"]
WORKERS = ["--config.input_workers=2"]
QAT = ["--config.quantization=int8", "--config.quantize_weights=per_tensor"]


@pytest.mark.slow
@pytest.mark.parametrize("before,after,restored", [
    ([], [], True),  # in-process input, its position restored from the checkpoint
    (EPOCHS + WORKERS, EPOCHS + WORKERS, True),  # worker processes' states
    (EPOCHS, EPOCHS + WORKERS, False),  # a new layout: the step's position
    (QAT, QAT, True),  # quantization-aware training: activation ranges resume too
], ids=["threads", "mid-epoch-workers", "new-layout", "qat"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, small_config_file, before,
                                              after, restored):
  """Killed after a checkpoint and run again, the run ends exactly as an
  uninterrupted one: parameters, optimizer state, EMA, RNG and history."""
  straight = tmp_path / "straight"
  code, err = main(straight, small_config_file, *RESUME, *before)
  assert code == 0, err[-2000:]
  killed = tmp_path / "killed"
  kill_after_checkpoint(killed, small_config_file, RESUME + before)
  assert os.path.isdir(killed / "checkpoints" / "4" / "input")
  code, err = main(killed, small_config_file, *RESUME, *after)
  assert code == 0, err[-2000:]
  assert "Resumed from step" in err
  assert ("Input layout changed" not in err) == restored, err[-2000:]
  assert_same_run(straight, killed)


@pytest.mark.slow
def test_sigterm_saves_after_its_call_and_the_rerun_is_bit_identical(tmp_path,
                                                                    small_config_file):
  """A preemption's SIGTERM mid-run: the run saves at the end of the call it
  is in (4 steps a call here), says so in one line and exits non-zero; run
  again, it ends exactly as an uninterrupted run."""
  config = RESUME + ["--config.checkpoint_every_steps=12"]  # saves only at the end
  straight = tmp_path / "straight"
  code, err = main(straight, small_config_file, *config)
  assert code == 0, err[-2000:]
  stopped = tmp_path / "stopped"
  proc = main(stopped, small_config_file, *config, wait=False)
  deadline = time.time() + 300
  log = stopped / "train.log"
  while not (log.exists() and "step 4/12" in log.read_text()) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)  # during step 4's evaluation, which compiles
  _, err = proc.communicate(timeout=300)
  assert proc.returncode != 0
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "SIGTERM: saved step " in lines[0], err[-2000:]
  saved = int(lines[0].split("saved step ")[1].split()[0])
  assert saved % 4 == 0
  assert [d for d in os.listdir(stopped / "checkpoints") if d.isdigit()] == [str(saved)]
  code, err = main(stopped, small_config_file, *config)
  assert code == 0 and f"Resumed from step {saved}" in err, err[-2000:]
  assert_same_run(straight, stopped)


def test_missing_dataset_is_one_line_and_nonzero(tmp_path, small_config_file):
  code, err = main(tmp_path, small_config_file, "--config.num_train_steps=2",
                   "--config.dataset=imagenet2012", "--config.data_dir=/nonexistent/tfds",
                   "--config.model.num_classes=1000")
  assert code != 0
  lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
  for word in ("imagenet2012", "manual_dir", "configs/default.py"):
    assert word in lines[0]


def checkpoint_files(workdir):
  """{path: bytes} of everything a rerun must not touch."""
  files = sorted(p for p in workdir.rglob("*") if p.is_file()
                 and ("checkpoints" in p.parts or p.name == "results.json"))
  return {str(p): p.read_bytes() for p in files}


@pytest.mark.slow
def test_bad_input_settings_stop_before_touching_checkpoints(tmp_path, small_config_file):
  """A bad worker count, a TFRecord-only dataset, a data_dir without the
  dataset: one line naming the key and the fix, exit 2, the run's
  checkpoints and results as they were."""
  run = tmp_path / "run"
  code, err = main(run, small_config_file, "--config.num_train_steps=2")
  assert code == 0, err[-2000:]
  before = checkpoint_files(run)
  from mobilenet_jax.data import datasets  # noqa: F401  (registers sklearn_digits)
  tfrecord = tmp_path / "tfrecord"
  tfds.builder("sklearn_digits", data_dir=str(tfrecord),
               file_format="tfrecord").download_and_prepare()
  cases = [
      (["--config.input_workers=-1"], ["input_workers=-1", "integer >= 0"]),
      ([f"--config.data_dir={tfrecord}"],
       ["tfrecord", f"python -m mobilenet_jax.tools.prepare_data --dataset=sklearn_digits "
                    f"--data_dir={tfrecord}"]),
      (["--config.dataset=imagenet2012", f"--config.data_dir={tmp_path / 'empty'}",
        "--config.model.num_classes=1000"], ["imagenet2012", "manual_dir"]),
  ]
  for overrides, words in cases:
    code, err = main(run, small_config_file, "--config.num_train_steps=4", *overrides)
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for word in words:
      assert word in lines[0], lines[0]
    assert checkpoint_files(run) == before


# main turns every ConfigError into one line and exit status 2 (the test
# above, tests/summary_test.py); these check the messages themselves.
@pytest.mark.parametrize("overrides,words", [
    (dict(optimizer="adagrad"), ["optimizer", "'rmsprop_tf'"]),
    (dict(batch_size=6), ["batch_size=6", "4 devices"]),
    (dict(eval_batch_size=10), ["eval_batch_size=10", "4 devices"]),
    (dict(dataset="no_such_set"), ["no_such_set", "sklearn_digits"]),
    (dict(train_augment="autoaugment"), ["train_augment", "'inception'"]),
])
def test_bad_config_values_name_the_key(tmp_path, overrides, words):
  config = tiny(default.get_config(), num_train_steps=2, **overrides)
  with pytest.raises(ConfigError) as e:
    defaults.validate(config)  # as every entry point does, once
    loop.train_and_evaluate(config, str(tmp_path))
  for word in words:
    assert word in str(e.value)
  assert not os.path.exists(tmp_path / "checkpoints" / "1")


@pytest.mark.slow
def test_nonfinite_loss_stops_with_the_step_and_keeps_checkpoints(tmp_path):
  config = small_config()
  config.update(dict(num_train_steps=6, optimizer="sgd", learning_rate=1e30,
                     warmup_epochs=0.0, checkpoint_every_steps=1, log_every_steps=100))
  with pytest.raises(loop.TrainingError, match="not finite at step 2.*step 1"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
  assert not os.path.exists(tmp_path / "results.json")


@pytest.mark.slow
def test_different_model_in_workdir_refuses_to_resume(tmp_path, small_config_file):
  config = runpy.run_path(small_config_file)["get_config"]()
  manager = checkpoint.create_manager(str(tmp_path), 1)
  checkpoint.save(manager, 5, {"x": np.zeros(3)}, run.new_meta(config))
  code, err = main(tmp_path, small_config_file, "--config.num_train_steps=2",
                   "--config.model.alpha=0.75")
  assert code != 0
  line = [l for l in err.splitlines() if l.startswith("error:")][0]
  assert "different model" in line and "model.alpha: 0.5 there, 0.75 here" in line
  assert os.path.isdir(tmp_path / "checkpoints" / "5")  # left as it was


# ------------------------------------------------- init_from (warm start) ---

def warm_start_setup(tmp_path, num_classes):
  """A state for configs/default.py and a converted-weights checkpoint of the
  same network (every weight + 1) with `num_classes` classes."""
  config = tiny(default.get_config())
  config.model.blocks = SMALL_BLOCKS
  tx, _ = optim.create_optimizer(config, 10, 100)
  state = initial_state(config, tx)
  source = config.copy_and_resolve_references()
  source.model.num_classes = num_classes
  other = initial_state(source, tx, seed=1)
  saved = jax.tree.map(lambda x: x + 1, {"params": other.params,
                                         "batch_stats": other.batch_stats})
  checkpoint.save_weights(str(tmp_path / "weights"), saved, source)
  config.init_from = str(tmp_path / "weights")
  return config, tx, state, saved


def test_init_from_loads_every_weight_and_a_new_head_for_another_class_count(tmp_path):
  config, tx, state, saved = warm_start_setup(tmp_path, num_classes=7)
  started = loop.warm_start(state, config, tx)
  flat = lambda t: flax.traverse_util.flatten_dict(t, sep="/")
  for path, value in flat(started.params).items():
    expected = state.params if path.startswith("classifier") else saved["params"]
    np.testing.assert_array_equal(value, flat(expected)[path])
  jax.tree.map(np.testing.assert_array_equal, started.batch_stats, saved["batch_stats"])
  assert int(started.step) == 0


@pytest.mark.slow
def test_init_from_of_another_width_is_a_clear_error(tmp_path):
  config, tx, state, _ = warm_start_setup(tmp_path, num_classes=10)
  config.model.alpha = 0.5
  other = initial_state(config, tx)
  with pytest.raises(ConfigError, match="another architecture: .* has shape"):
    loop.warm_start(other, config, tx)


@pytest.mark.slow
def test_converted_weights_are_not_resumed_as_a_run(tmp_path):
  config, tx, state, _ = warm_start_setup(tmp_path, num_classes=10)
  manager = checkpoint.create_manager(config.init_from, 2)
  step, meta = checkpoint.latest_meta(manager)
  assert step == 0
  with pytest.raises(ConfigError, match="holds converted weights, not a training run"):
    run.check_resumable(meta, config, config.init_from)
  with pytest.raises(ConfigError, match="already holds a checkpoint"):
    checkpoint.save_weights(config.init_from, {}, config)
