"""TFLite and SavedModel export of a trained run, against the JAX model."""

import fcntl
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from configs import default
from conftest import ROOT
from mobilenet_jax.training import checkpoint
from mobilenet_jax.errors import ConfigError
from mobilenet_jax.interop import tf_export
from mobilenet_jax.models import get_model

# The run is trained once per test run (the `run` fixture), and these tests
# share it on one worker where xdist groups them (not under pytest 9.2:
# pytest-xdist#1386; the run is still trained only once then).
pytestmark = pytest.mark.xdist_group("export")


@pytest.fixture(scope="session")
def run(tmp_path_factory):
  """The README's first command: configs/default.py trained to the end (~3 min
  on one device in its own process). Shorter runs leave margins so thin that
  int8 flips 1-2% of the predictions (20 epochs: 98.3%, 30: 98.6-98.9%; the
  full run: 99.4-99.7%)."""
  # Each xdist worker is a process with its own session fixtures: the workers
  # of one test run share basetemp's parent, and the first to get the lock
  # trains there while a second waits for it instead of training again.
  base = tmp_path_factory.getbasetemp()
  shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  workdir = str(shared / "export_run")
  with open(shared / "export_run.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(os.path.join(workdir, "results.json")):
      proc = subprocess.run([sys.executable, "-m", "mobilenet_jax.main", "--config",
                             "configs/default.py", "--workdir", workdir,
                             "--config.eval_every_steps=100000"],
                            cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, XLA_FLAGS=""))
      assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["eval_top1"] >= 0.95, "the default run learns less than it did"
  return workdir, default.get_config()


@pytest.fixture(scope="session")
def eval_set(run):
  """Every digits evaluation image, and the training model's logits for them."""
  from mobilenet_jax.data import datasets, input_pipeline
  workdir, config = run
  builder = datasets.get_builder(config)
  images, labels = input_pipeline.first_examples(config, builder, config.eval_split, 10_000)
  state, _, _ = checkpoint.restore_on_one_device(workdir)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  logits = np.asarray(get_model(config.model).apply(variables, images, train=False))
  return images, labels, logits


def test_an_untrained_checkpoint_exports_to_tflite_as_jax_computes_it(tmp_path):
  """The export path end to end on a small model, without the trained run:
  synthetic data, so random images are the check and int8 has no calibration."""
  config = default.get_config()
  config.dataset = "synthetic"
  config.model.blocks = ((1, 16, 1, 1), (6, 24, 2, 2))
  x = np.zeros((1, config.image_size, config.image_size, 3), np.float32)
  variables = get_model(config.model).init(jax.random.key(0), x, train=False)
  workdir = str(tmp_path / "weights")
  checkpoint.save_weights(workdir, dict(variables), config)
  out = str(tmp_path / "model.tflite")
  report = tf_export.export(workdir, "tflite", out=out, check_examples=8,
                            compare_keras=False)
  assert report["check"]["examples"] == 8
  assert report["check"]["max_abs_difference"] < 1e-4
  assert "keras" not in report and "no Keras model" in tf_export.summary(report)
  assert json.load(open(out + ".json"))["check"] == report["check"]
  with pytest.raises(ConfigError, match="no dataset"):
    tf_export.export(workdir, "tflite", "int8", out=str(tmp_path / "int8.tflite"))
  assert not os.path.exists(tmp_path / "int8.tflite")


def tflite_ops(path):
  runner = tf_export.interpreter(open(path, "rb").read())
  return sorted(op["op_name"] for op in runner._get_ops_details())


@pytest.mark.slow
def test_tflite_float32_equals_jax_and_has_the_ops_keras_gets(run, eval_set, tmp_path):
  workdir, _ = run
  images, _, logits = eval_set
  out = str(tmp_path / "model.tflite")
  report = tf_export.export(workdir, "tflite", out=out, check_examples=16)
  exported = tf_export.tflite_logits(open(out, "rb").read(), images)
  assert np.abs(exported - logits).max() < 1e-4
  assert report["check"]["max_abs_difference"] < 1e-4
  # Batch norm folded: the same convolution kernels Keras' converted model runs.
  ops = tflite_ops(out)
  assert ops.count("DEPTHWISE_CONV_2D") == 17 and ops.count("CONV_2D") == 35
  assert report["keras"]["size_mb"] == pytest.approx(report["size_mb"], rel=0.05)
  assert os.path.exists(out + ".json") and not os.path.exists(out + ".tmp")


@pytest.mark.slow
def test_int8_agrees_with_jax_on_top1_for_99_percent_of_the_eval_set(run, eval_set, tmp_path):
  workdir, _ = run
  images, labels, logits = eval_set
  out = str(tmp_path / "model_int8.tflite")
  report = tf_export.export(workdir, "tflite", "int8", out=out, compare_keras=False)
  exported = tf_export.tflite_logits(open(out, "rb").read(), images)
  assert len(images) == 360
  assert np.mean(exported.argmax(-1) == logits.argmax(-1)) >= 0.99
  # Really quantised: int8 weights take well under half of the float32 bytes.
  state, _, _ = checkpoint.restore_on_one_device(workdir)
  float_mb = sum(np.size(x) for x in jax.tree.leaves(state["params"])) * 4 / 2**20
  assert report["size_mb"] < 0.4 * float_mb
  runner = tf_export.interpreter(open(out, "rb").read())
  kinds = {str(t["dtype"]) for t in runner.get_tensor_details()}
  assert "<class 'numpy.int8'>" in kinds


@pytest.mark.slow
def test_saved_model_equals_jax_for_any_batch(run, eval_set, tmp_path):
  import tensorflow as tf
  workdir, _ = run
  images, _, logits = eval_set
  out = str(tmp_path / "saved_model")
  tf_export.export(workdir, "saved_model", out=out, check_examples=8)
  serve = tf.saved_model.load(out).signatures["serving_default"]
  for start, stop in ((0, 3), (3, 20)):
    got = next(iter(serve(images=tf.constant(images[start:stop])).values())).numpy()
    np.testing.assert_allclose(got, logits[start:stop], atol=1e-4)


@pytest.mark.slow
def test_export_refuses_what_it_cannot_do_and_overwrites_nothing(run, tmp_path):
  workdir, _ = run
  existing = tmp_path / "model.tflite"
  existing.write_bytes(b"keep me")
  with pytest.raises(ConfigError, match="exists"):
    tf_export.export(workdir, "tflite", out=str(existing))
  assert existing.read_bytes() == b"keep me"
  with pytest.raises(ConfigError, match="int8 is for --format tflite"):
    tf_export.export(workdir, "saved_model", "int8", out=str(tmp_path / "sm"))
  with pytest.raises(ConfigError, match="no checkpoint"):
    tf_export.export(str(tmp_path / "empty"), "tflite")


# Quantization-aware training as README's export section shows it: 10 epochs
# fine-tuned from the float run, then exported to int8.
QAT_FINE_TUNE = ["--config.quantization=int8", "--config.num_epochs=10",
                 "--config.learning_rate=3e-4", "--config.warmup_epochs=0",
                 "--config.eval_every_steps=100000"]


@pytest.fixture(scope="session")
def qat_run(run, tmp_path_factory):
  workdir, _ = run
  qat = str(tmp_path_factory.mktemp("qat") / "run")
  proc = subprocess.run([sys.executable, "-m", "mobilenet_jax.main", "--config",
                         "configs/default.py", "--workdir", qat,
                         f"--config.init_from={workdir}", *QAT_FINE_TUNE],
                        cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, XLA_FLAGS=""))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Initialised from step 1320" in proc.stderr
  with open(os.path.join(qat, "results.json")) as f:
    return qat, json.load(f)


@pytest.mark.slow
def test_qat_int8_export_agrees_with_the_qat_evaluation(run, qat_run, tmp_path):
  """The int8 TFLite model of a QAT run predicts as the QAT model's own int8
  simulation does on the whole eval set, in a file the size of the PTQ one."""
  workdir, _ = run
  qat, results = qat_run
  float_top1 = json.load(open(os.path.join(workdir, "results.json")))["eval_top1"]
  # Within 2 points (7 of 360 digits) of float. One seed's QAT - float has ranged
  # from -1.1 (this default run since the stem's rounding changed at d53715d; the
  # code before it, fine-tuning the same checkpoint, also gives -1.1) to +0.8
  # (bottleneck_precision's 5 seeds): a broken QAT loses far more.
  assert results["eval_top1"] >= float_top1 - 0.02
  report = tf_export.export(qat, "tflite", "int8", out=str(tmp_path / "qat.tflite"),
                            compare_keras=False)
  check = report["check"]
  assert check["examples"] == 360 and report["trained"] == "int8 per_channel"
  assert check["top1_jax"] == pytest.approx(results["eval_top1"])  # QAT's own eval
  assert check["top1_agreement"] >= 0.98, check
  ptq = tf_export.export(workdir, "tflite", "int8", out=str(tmp_path / "ptq.tflite"),
                         compare_keras=False, check_examples=8)
  assert report["size_mb"] == pytest.approx(ptq["size_mb"], rel=0.02)


@pytest.mark.slow
def test_a_qat_run_exports_only_to_int8_tflite(qat_run, tmp_path):
  qat, _ = qat_run
  for fmt, quantize in (("saved_model", "none"), ("tflite", "none")):
    out = tmp_path / fmt
    with pytest.raises(ConfigError, match="only an int8 TFLite model honours"):
      tf_export.export(qat, fmt, quantize, out=str(out))
    assert not os.path.exists(out)
  proc = subprocess.run([sys.executable, "-m", "mobilenet_jax.tools.export", "--workdir",
                         qat, "--format", "saved_model", "--out", str(tmp_path / "sm")],
                        cwd=ROOT, capture_output=True, text=True)
  lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
  assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr
