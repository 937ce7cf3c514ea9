"""The ablation runner and its report: sweep expansion, statistics on
hand-made results, bad results files, and a killed sweep finished by a rerun."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs import default
from conftest import ROOT
from mobilenet_jax import defaults
from mobilenet_jax.tools import ablate, report
from mobilenet_jax.errors import ConfigError


def sweep(**changes):
  return dict(name="toy", question="Which is better?", base=default.get_config(),
              variants={"a": {"model.alpha": 0.75}, "b": {"model.alpha": 0.25,
                                                          "num_epochs": 3.0}},
              seeds=[0, 1, 2], **changes)


def test_expansion_is_variants_times_seeds_with_unique_names():
  runs = ablate.expand(sweep(), overrides={"num_epochs": 5.0, "model.alpha": 1.0})
  assert [r.name for r in runs] == [f"{v}/seed_{s}" for v in "ab" for s in (0, 1, 2)]
  assert [r.config.seed for r in runs] == [0, 1, 2] * 2
  # The command line's overrides apply to all; a variant's own win.
  assert [r.config.model.alpha for r in runs] == [0.75] * 3 + [0.25] * 3
  assert [r.config.num_epochs for r in runs] == [5.0] * 3 + [3.0] * 3
  assert default.get_config().model.alpha == 0.5  # the base is not changed
  assert len(ablate.expand(sweep(), seeds=[7])) == 2
  # A model attribute the default config leaves unset is a valid key too.
  blocks = ((1, 16, 1, 1),)
  runs = ablate.expand(sweep(), overrides={"model.blocks": blocks})
  assert all(r.config.model.blocks == blocks for r in runs)


def test_set_reaches_inside_a_section_a_variant_replaces():
  """The more specific key wins: --set model.num_classes survives a variant
  that swaps in another network's whole model section (width_multiplier's
  V1 and V2); --set model.alpha still loses to a variant's own model.alpha."""
  v1 = defaults.model_config("mobilenet_v1")
  s = sweep()
  s["variants"] = {"v1": {"model": v1}, "v2_thin": {"model.alpha": 0.35}}
  runs = ablate.expand(s, overrides={"model.num_classes": 7, "model.alpha": 0.75})
  assert [r.config.model.name for r in runs[::3]] == ["mobilenet_v1", "mobilenet_v2"]
  assert all(r.config.model.num_classes == 7 for r in runs)
  assert [r.config.model.alpha for r in runs[::3]] == [0.75, 0.35]
  assert v1.num_classes == 1000 and v1.alpha == 1.0  # the sweep's own section untouched
  assert runs[0].config.model is not runs[1].config.model


def test_unknown_keys_and_repeated_seeds_are_errors():
  with pytest.raises(ConfigError, match="variant 'a'.*'model.width'"):
    s = sweep()
    s["variants"]["a"] = {"model.width": 2}
    ablate.expand(s)
  with pytest.raises(ConfigError, match="--set.*'epochs'"):
    ablate.expand(sweep(), overrides={"epochs": 1})
  with pytest.raises(ConfigError, match="repeats"):
    ablate.expand(sweep(), seeds=[1, 1])


def test_report_keys_are_copied_to_sweep_json_and_checked_up_front(tmp_path):
  gap = dict(x="model.alpha", split="model.bottleneck_activation",
             minus=["linear", "relu6"], xlabel="width multiplier alpha")
  s = sweep(compare_to="b", gap=gap, plot="gap")
  s["variants"] = {"a": {"model.bottleneck_activation": "linear"},
                   "b": {"model.bottleneck_activation": "relu6"}}
  ablate.write_sweep_record(str(tmp_path), s, ablate.expand(s))
  record = json.loads((tmp_path / "sweep.json").read_text())
  assert record["compare_to"] == "b" and record["gap"] == gap and record["plot"] == "gap"
  # Without the keys, sweep.json is as before.
  ablate.write_sweep_record(str(tmp_path / "plain"), sweep(), ablate.expand(sweep()))
  assert not {"compare_to", "gap"} & set(json.loads((tmp_path / "plain" / "sweep.json").read_text()))

  def fails(match, **changes):
    bad = {**s, **changes}
    with pytest.raises(ConfigError, match=match):
      ablate.write_sweep_record(str(tmp_path / "bad"), bad, ablate.expand(bad))
    assert not (tmp_path / "bad").exists()  # nothing written, nothing trained

  fails(r"compare_to='c' is not a variant; choose one of 'a', 'b'\.", compare_to="c")
  fails("gap needs the keys x, split and minus", gap=dict(x="model.alpha"))
  fails("plot='gap' needs a gap key", gap=None)
  fails("gap: unknown config key 'model.alfa'", gap={**gap, "x": "model.alfa"})
  fails(r"gap minus=\['linear', 'relu'\] must be two values of "
        r"model.bottleneck_activation that the variants use: 'linear', 'relu6'\.",
        gap={**gap, "minus": ["linear", "relu"]})


def write_result(workdir, variant, seed, top1, loss=1.0, history=None):
  run_dir = workdir / variant / f"seed_{seed}"
  run_dir.mkdir(parents=True)
  config = default.get_config().to_dict()
  (run_dir / "results.json").write_text(json.dumps({
      "config": config, "eval_top1": top1, "eval_loss": loss, "train_time_s": 10.0,
      "params": 1000, "madds": 2e6, "device_kind": "cpu", "num_devices": 1,
      "steps": 20, "global_batch_size": 64,
      "history": history or [{"step": 10, "eval_top1": top1 / 2},
                             {"step": 20, "eval_top1": top1}]}))
  return run_dir


def test_report_statistics_on_hand_made_results(tmp_path):
  (tmp_path / "sweep.json").write_text(json.dumps({
      "name": "toy", "question": "Which is better?", "plot": "curves",
      "variants": ["a", "b", "c"], "seeds": [0, 1, 2], "command": "cmd",
      "commit": "abc"}))
  for seed, top1 in enumerate((0.90, 0.92, 0.94)):
    write_result(tmp_path, "a", seed, top1, loss=0.5 + seed)
  for seed, top1 in enumerate((0.50, 0.52)):
    write_result(tmp_path, "b", seed, top1)
  write_result(tmp_path, "b", 2, 0.6)
  (tmp_path / "b" / "seed_2" / "results.json").write_text("{not json")
  (tmp_path / "c" / "seed_0").mkdir(parents=True)  # started, never finished
  path = report.write_report(str(tmp_path))
  text = open(path).read()
  # a: mean 92.00, sample std 2.00, 95% t-interval 92 -+ 4.303 * 2 / sqrt(3),
  # n 3; loss mean 1.5, std 1.0.
  assert ("| a | 1,000 | 2.00M | 92.00 ± 2.00 | [87.03, 96.97] | 1.5000 ± 1.0000 "
          "| 10 | 3 |") in text
  # b: the corrupt seed is skipped, not counted: n 2 (t = 12.71 at 1 dof).
  assert ("| b | 1,000 | 2.00M | 51.00 ± 1.41 | [38.29, 63.71] | 1.0000 ± 0.0000 "
          "| 10 | 2 |") in text
  assert "| c | | | (no finished runs) | | | | 0 |" in text
  assert "b/seed_2: results.json unreadable (JSONDecodeError" in text
  assert "c/seed_0: no results.json" in text
  # Paired on seeds 0 and 1, b - a is -40 in both.
  assert "a ends higher than b by 40.00 points (95% CI [40.00, 40.00], 2 seeds)" in text
  assert "commit `abc`" in text and "`cmd`" in text
  assert os.path.getsize(tmp_path / "toy_eval_curves.png") > 10_000
  # Built only from the files: regenerating gives the same report.
  assert open(report.write_report(str(tmp_path))).read() == text


def test_close_variants_are_not_called_different(tmp_path):
  for seed, (a, b) in enumerate(((0.90, 0.91), (0.93, 0.90), (0.91, 0.92))):
    write_result(tmp_path, "a", seed, a)
    write_result(tmp_path, "b", seed, b)
  (tmp_path / "sweep.json").write_text(json.dumps({
      "name": "close", "question": "", "plot": "madds", "variants": ["a", "b"],
      "seeds": [0, 1, 2], "command": "cmd"}))
  text = open(report.write_report(str(tmp_path))).read()
  assert "b vs a: not separable at 3 seeds" in text  # b - a: +1, -3, +1
  assert os.path.exists(tmp_path / "close_top1_vs_madds.png")


TINY_SWEEP = """
from configs import default

def get_sweep():
  base = default.get_config()
  base.model.blocks = ((1, 16, 1, 1), (6, 24, 2, 2))
  base.depthwise_impl = "lax"
  base.num_train_steps = 4
  base.eval_every_steps = 4
  base.checkpoint_every_steps = 2
  base.per_device_batch_size = 4
  return dict(name="tiny", question="Does the runner resume?", base=base,
              variants={"relu6": {"model.bottleneck_activation": "relu6"},
                        "linear": {}},
              seeds=[0], plot="curves")
"""


def test_commands_write_the_report_to_out(tmp_path):
  """ablate and report as a user runs them: a sweep whose runs are all done
  only gets its report, written where --out says; report rebuilds the same."""
  sweep_file = tmp_path / "sweep.py"
  sweep_file.write_text(TINY_SWEEP)
  workdir = tmp_path / "runs"
  write_result(workdir, "relu6", 0, 0.9)
  write_result(workdir, "linear", 0, 0.8)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             MOBILENET_JAX_HUGEPAGES="0")
  ablate_out, report_out = tmp_path / "ablate_out", tmp_path / "report_out"
  done = subprocess.run([sys.executable, "-m", "mobilenet_jax.tools.ablate", "--sweep",
                         str(sweep_file), "--workdir", str(workdir), "--out", str(ablate_out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "run 2/2 linear/seed_0: done before, skipped" in done.stdout
  text = (ablate_out / "report.md").read_text()
  assert "| relu6 | 1,000 | 2.00M | 90.00 ± 0.00 |" in text
  assert not (workdir / "report.md").exists()
  rebuilt = subprocess.run([sys.executable, "-m", "mobilenet_jax.tools.report", str(workdir),
                            "--out", str(report_out)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
  assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
  assert rebuilt.stdout.strip() == str(report_out / "report.md")
  assert (report_out / "report.md").read_text() == text


def tiny_sweep_command(tmp_path):
  """(argv, environment, workdir) of ablate running TINY_SWEEP on one device."""
  sweep_file = tmp_path / "sweep.py"
  sweep_file.write_text(TINY_SWEEP)
  workdir = tmp_path / "runs"
  args = [sys.executable, "-m", "mobilenet_jax.tools.ablate", "--sweep", str(sweep_file),
          "--workdir", str(workdir)]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return args, env, workdir


@pytest.mark.slow
def test_killed_sweep_finishes_without_redoing_runs(tmp_path):
  args, env, workdir = tiny_sweep_command(tmp_path)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # ablate's own cache is tested below
  first = workdir / "relu6" / "seed_0" / "results.json"
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not first.exists() and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert first.exists() and not (workdir / "report.md").exists()
  stamp = os.path.getmtime(first)
  done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "run 1/2 relu6/seed_0: done before, skipped" in done.stdout
  assert "run 2/2 linear/seed_0" in done.stdout
  assert os.path.getmtime(first) == stamp  # not redone
  text = (workdir / "report.md").read_text()
  assert text.count(" | 1 |") == 2  # each run counted once
  assert os.listdir(workdir / "compilation_cache")  # the runs' programs, for the next


SHIPPED = sorted(glob.glob(os.path.join(ROOT, "experiments", "*", "sweep.py")))
# Sweeps of MobileNetV2's Figure 6 knobs: the paper's effects there are small.
FIGURE_6_KNOBS = ("model.bottleneck_activation", "model.shortcut")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_shipped_sweep_is_valid_converged_and_seeded_enough(path, monkeypatch):
  monkeypatch.chdir(ROOT)  # sweeps import experiments.sweeps
  monkeypatch.syspath_prepend(ROOT)
  sweep = ablate.load_sweep(path)
  runs = ablate.expand(sweep)  # validates every run's config
  ablate.check_report_keys(sweep, runs)
  assert sweep["name"] == os.path.basename(os.path.dirname(path))
  trained = [r for r in runs if not (r.config.init_from or "").startswith(ablate.FROM_VARIANT)]
  assert trained and all(r.config.num_epochs >= 60 for r in trained), \
      "a shipped sweep trains the whole budget (fine-tunes start from such runs)"
  # Its README's ImageNet command sets the classes of every run.
  assert {r.config.model.num_classes for r in ablate.expand(
      sweep, {"model.num_classes": 1000})} == {1000}
  changed = {key for changes in sweep["variants"].values() for key in changes}
  assert len(sweep["seeds"]) >= (5 if changed & set(FIGURE_6_KNOBS) else 3)
