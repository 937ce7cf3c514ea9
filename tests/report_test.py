"""The sweep report's statistics and sections, on hand-made results.json files
with known numbers: no training."""

import json
import math
import os

import matplotlib.axes
import pytest

from configs import default
from mobilenet_jax.tools import report

T_975_2 = 4.302652729749462  # Student t, 97.5% quantile, 2 degrees of freedom


def write_run(workdir, variant, seed, top1s, steps=100, every=20, **config):
  """A results.json whose history evaluates every `every` steps, ending at
  `steps`, with top-1 `top1s` (in %); `config` sets dotted keys."""
  cfg = default.get_config().to_dict()
  for key, value in config.items():
    *parents, leaf = key.split("__")
    node = cfg
    for p in parents:
      node = node[p]
    node[leaf] = value
  cfg["seed"] = seed
  first = steps - every * (len(top1s) - 1)
  history = [{"step": first + every * i, "eval_top1": t / 100, "eval_loss": 1.0}
             for i, t in enumerate(top1s)]
  run_dir = workdir / variant / f"seed_{seed}"
  run_dir.mkdir(parents=True)
  (run_dir / "results.json").write_text(json.dumps({
      "config": cfg, "eval_top1": top1s[-1] / 100, "eval_loss": 1.0,
      "train_time_s": 10.0, "params": 1000, "madds": 2e6, "device_kind": "cpu",
      "num_devices": 1, "steps": steps, "global_batch_size": 64,
      "history": history}))


def write_record(workdir, variants, seeds=(0, 1, 2), **keys):
  record = {"name": "toy", "question": "Which is better?", "plot": "curves",
            "variants": variants, "seeds": list(seeds), "command": "cmd",
            "commit": "abc", **keys}
  (workdir / "sweep.json").write_text(json.dumps(record))


def build(workdir) -> str:
  return open(report.write_report(str(workdir))).read()


def section(text, title) -> str:
  """The lines under `## title` up to the next section."""
  start = text.index(f"## {title}")
  end = text.find("\n## ", start + 1)
  return text[start:end if end >= 0 else None]


def test_table_shows_the_interval_next_to_mean_std_and_n(tmp_path):
  write_record(tmp_path, ["a"])
  for seed, top1 in enumerate((90.0, 92.0, 94.0)):
    write_run(tmp_path, "a", seed, [top1])
  # mean 92, std 2: 92 -+ 4.303 * 2 / sqrt(3)
  assert "| a | 1,000 | 2.00M | 92.00 ± 2.00 | [87.03, 96.97] | " in build(tmp_path)


def test_paired_differences_on_the_common_seeds(tmp_path):
  """b differs a lot between seeds, a - b hardly: only pairing sees it. Seed 3
  of b has no partner in a and is left out of the pair."""
  write_record(tmp_path, ["a", "b"], seeds=[0, 1, 2, 3], compare_to="b")
  for seed, (b, diff) in enumerate(((50, 1), (60, 2), (70, 3))):
    write_run(tmp_path, "a", seed, [b + diff])
    write_run(tmp_path, "b", seed, [b])
  write_run(tmp_path, "b", 3, [10])
  text = section(build(tmp_path), "Final top-1")
  assert ("- a − b: mean +2.00, 95% CI [-0.48, 4.48], n = 3 "
          "(seed 0: +1.00, seed 1: +2.00, seed 2: +3.00)") in text
  assert "**a vs b: not separable at 3 seeds (95% CI [-0.48, 4.48]).**" in text


@pytest.mark.parametrize("diffs, conclusion", [
    ((2.0, 2.1, 1.9), "a ends higher than b by 2.00 points (95% CI [1.75, 2.25], 3 seeds)."),
    ((-2.0, -2.1, -1.9), "b ends higher than a by 2.00 points (95% CI [1.75, 2.25], 3 seeds)."),
    ((1.0, 2.0, -1.0), "a vs b: not separable at 3 seeds (95% CI [-3.13, 4.46])."),
    ((5.0,), "a vs b: 1 paired seed, no interval: no claim."),
])
def test_conclusion_follows_the_interval(tmp_path, diffs, conclusion):
  write_record(tmp_path, ["a", "b"], compare_to="b")
  for seed, diff in enumerate(diffs):
    write_run(tmp_path, "a", seed, [60 + 10 * seed + diff])
    write_run(tmp_path, "b", seed, [60 + 10 * seed])
  text = build(tmp_path)
  assert f"**{conclusion}**" in section(text, "Final top-1")
  assert "standard error" not in text


def test_reference_is_compare_to_else_the_best_mean(tmp_path):
  write_record(tmp_path, ["a", "b", "c"])
  for seed in range(3):
    for variant, top1 in (("a", 50), ("b", 60), ("c", 70)):
      write_run(tmp_path, variant, seed, [top1 + seed])
  text = section(build(tmp_path), "Final top-1")
  assert "against **c** (the highest mean top-1, 71.00 ± 1.00%)" in text
  assert "- a − c: mean -20.00" in text and "- b − c: mean -10.00" in text
  write_record(tmp_path, ["a", "b", "c"], compare_to="a")
  text = section(build(tmp_path), "Final top-1")
  assert "against **a** (the sweep's compare_to)" in text
  assert "- b − a: mean +10.00" in text and "- c − a: mean +20.00" in text
  assert "− c:" not in text


def test_learning_speed_table_uses_the_last_evaluation_at_or_before_each_fraction(tmp_path):
  write_record(tmp_path, ["a", "b"])
  for seed in range(2):
    # Evaluated at steps 20, 40, ..., 100 of 100.
    write_run(tmp_path, "a", seed, [30 + seed, 50, 70, 80, 90 + 2 * seed])
    # Evaluated at steps 50, 100, ..., 200 of 200: nothing by 10% (step 20).
    write_run(tmp_path, "b", seed, [40, 60 + seed, 70, 80], steps=200, every=50)
  table = section(build(tmp_path), "Learning speed")
  assert "| variant | 10% of steps | 25% of steps | 50% of steps | 100% of steps |" in table
  assert ("| a | no evaluation yet | 30.50 ± 0.71 (step 20) | 50.00 ± 0.00 (step 40) | "
          "91.00 ± 1.41 (step 100) |") in table
  assert ("| b | no evaluation yet | 40.00 ± 0.00 (step 50) | 60.50 ± 0.71 (step 100) | "
          "80.00 ± 0.00 (step 200) |") in table
  # 25% is the earliest fraction with an evaluation in every run.
  assert "at 25% of the steps (the earliest fraction" in table


def test_learning_speed_is_told_apart_from_the_end(tmp_path):
  """Against ref: `fast` is higher at 25% only, `late` lower at the end only,
  `worse` both, `same` neither."""
  write_record(tmp_path, ["ref", "fast", "late", "worse", "same"], compare_to="ref")
  early_end = {"fast": ((10, 11, 9), (1, -1, 0)), "late": ((1, -1, 0), (-5, -6, -4)),
               "worse": ((-10, -11, -9), (-5, -6, -4)), "same": ((1, -1, 0), (1, -1, 0))}
  for seed in range(3):
    write_run(tmp_path, "ref", seed, [30 + seed, 50, 70, 80, 80 + seed])
    for variant, (early, end) in early_end.items():
      write_run(tmp_path, variant, seed,
                [30 + seed + early[seed], 50, 70, 80, 80 + seed + end[seed]])
  text = section(build(tmp_path), "Learning speed")
  lines = {line.split(":")[0]: line for line in text.splitlines() if line.startswith("- ")}
  assert lines["- fast − ref"].startswith(
      "- fast − ref: at 25%: mean +10.00, 95% CI [7.52, 12.48], n = 3 "
      "(seed 0: +10.00, seed 1: +11.00, seed 2: +9.00); at the end: mean +0.00")
  assert lines["- fast − ref"].endswith(
      "**differs early but not at the end: learns at another speed (fast higher "
      "at 25% of the steps), and the final top-1 is not separable.**")
  assert lines["- late − ref"].endswith(
      "**differs at the end (ref higher) but not at 25% of the steps.**")
  assert lines["- worse − ref"].endswith(
      "**differs both at 25% of the steps (ref higher) and at the end (ref higher).**")
  assert lines["- same − ref"].endswith(
      "**separable neither at 25% of the steps nor at the end at 3 seeds.**")


def test_convergence_lists_exactly_the_runs_still_moving(tmp_path):
  write_record(tmp_path, ["a", "b"])
  write_run(tmp_path, "a", 0, [50, 80, 80.5])
  write_run(tmp_path, "a", 1, [50, 70, 75])  # moved 5 points at the end
  write_run(tmp_path, "a", 2, [60])  # one evaluation: cannot tell
  write_run(tmp_path, "b", 0, [50, 79, 80])  # exactly 1 point: converged
  write_run(tmp_path, "b", 1, [50, 80, 79.5])
  text = section(build(tmp_path), "Convergence")
  assert "- a: 1 of 3 runs converged" in text and "- b: 2 of 2 runs converged" in text
  moving = [line for line in text.split("may still be moving.")[1].splitlines()
            if line.startswith("- ")]
  assert moving == [
      "- a/seed_1: 70.00% at step 80, then 75.00% at step 100 (+5.00 points)",
      "- a/seed_2: a single evaluation, so convergence cannot be checked"]


def write_gap_sweep(workdir, gaps, plot="gap"):
  """2 x 2: alpha in (1.0, 0.5) x activation in (linear, relu6), seeds 0-2;
  `gaps[alpha]` are the per-seed linear - relu6 differences."""
  variants = [f"{act}_{alpha}" for alpha in (1.0, 0.5) for act in ("linear", "relu6")]
  write_record(workdir, variants, plot=plot, gap=dict(
      x="model.alpha", split="model.bottleneck_activation",
      minus=["linear", "relu6"], xlabel="width multiplier alpha"))
  for alpha in (1.0, 0.5):
    for seed, diff in enumerate(gaps[alpha]):
      base = 40 + 20 * alpha + 5 * seed
      for act, top1 in (("linear", base + diff), ("relu6", base)):
        write_run(workdir, f"{act}_{alpha}", seed, [top1], model__alpha=alpha,
                  model__bottleneck_activation=act)


def test_gap_table_and_plot_from_a_2x2_sweep(tmp_path, monkeypatch):
  calls = []
  errorbar, axhline = matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.axhline
  monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, *a, **k: (
      calls.append(("errorbar", a, k)), errorbar(self, *a, **k))[1])
  monkeypatch.setattr(matplotlib.axes.Axes, "axhline", lambda self, *a, **k: (
      calls.append(("axhline", a, k)), axhline(self, *a, **k))[1])
  write_gap_sweep(tmp_path, {1.0: (1, 2, 3), 0.5: (5, 6.5, 7.5)})
  text = build(tmp_path)
  gap = section(text, "Gap")
  assert gap.startswith("## Gap: linear − relu6 by width multiplier alpha")
  assert ("| 1.0 | +2.00 | [-0.48, 4.48] | 3 | "
          "seed 0: +1.00, seed 1: +2.00, seed 2: +3.00 |") in gap
  assert "| 0.5 | +6.33 | " in gap
  assert gap.index("| 1.0 |") < gap.index("| 0.5 |")  # x shrinking downwards
  # Per seed the gap grows by 4, 4.5, 4.5: mean 4.33, std 0.29.
  assert ("mean +4.33 points, 95% CI [3.62, 5.05], n = 3): the gap is larger at "
          "model.alpha=0.5 than at 1.0: the intervals support a gap that grows") in gap
  assert "![toy](toy_gap.png)" in text
  assert os.path.getsize(tmp_path / "toy_gap.png") > 10_000
  (_, (xs, ys), kw), = [c for c in calls if c[0] == "errorbar"]
  assert list(xs) == [0.5, 1.0] and ys == pytest.approx([19 / 3, 2.0])
  assert kw["yerr"][1] == pytest.approx(T_975_2 / math.sqrt(3))
  assert [c[1] for c in calls if c[0] == "axhline"] == [(0,)]


def test_a_gap_the_intervals_do_not_separate_is_not_called_growing(tmp_path):
  write_gap_sweep(tmp_path, {1.0: (1, 2, 3), 0.5: (0, 5, 2)}, plot="curves")
  text = build(tmp_path)
  assert ("the intervals do not support a gap that grows as model.alpha shrinks"
          in section(text, "Gap"))
  assert os.path.exists(tmp_path / "toy_eval_curves.png")  # plot stays as asked
  assert not os.path.exists(tmp_path / "toy_gap.png")


def test_report_regenerates_byte_identically_and_skips_bad_runs(tmp_path):
  write_record(tmp_path, ["a", "b"])
  for seed in range(3):
    write_run(tmp_path, "a", seed, [60, 60 + seed / 2])
    write_run(tmp_path, "b", seed, [50, 50 + seed / 2])
  (tmp_path / "b" / "seed_2" / "results.json").write_text("{not json")
  (tmp_path / "b" / "seed_3").mkdir()
  for path in tmp_path.glob("*/seed_*/results.json"):
    os.utime(path, (1704164640, 1704164640))  # 2024-01-02 03:04 UTC
  text = build(tmp_path)
  assert "runs finished by 2024-01-02 03:04 UTC" in text
  assert "- Command: `cmd`" in text and "commit `abc`" in text and "- Seeds: 0, 1, 2" in text
  assert "b/seed_2: results.json unreadable (JSONDecodeError" in text
  assert "b/seed_3: no results.json" in text
  assert "- b: 2 of 2 runs converged" in text  # the bad runs are not counted
  assert build(tmp_path) == text


def test_without_sweep_json_the_variants_are_the_directories_with_runs(tmp_path):
  write_run(tmp_path, "b", 0, [50])
  write_run(tmp_path, "a", 0, [60])
  (tmp_path / "compilation_cache" / "jit_step").mkdir(parents=True)  # ablate's cache
  text = build(tmp_path)
  table = text[:text.index("\n## ")]  # the summary table, before the sections
  rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")]
  assert rows == ["| variant", "| a", "| b"]  # sorted; no row for the cache


def test_against_pairs_each_variant_and_each_gap_with_the_other_sweep(tmp_path):
  """The artifact check's section: the same variants trained another way."""
  here, there = tmp_path / "here", tmp_path / "there"
  for workdir in (here, there):
    workdir.mkdir()
    write_record(workdir, ["linear", "relu6"], compare_to="linear")
  for seed in range(3):
    write_run(here, "linear", seed, [90 + seed])       # there + 1, every seed
    write_run(there, "linear", seed, [89 + seed])
    write_run(here, "relu6", seed, [70 + 2 * seed])    # there + 0, +1, +2
    write_run(there, "relu6", seed, [70 + seed])
  write_run(there, "relu6", 3, [10])  # a seed only there: not paired
  text = open(report.write_report(str(here), against=str(there))).read()
  lines = section(text, "Against toy").splitlines()
  assert f"--against {os.path.relpath(there)}`" in lines[2]  # no absolute path
  linear, relu6, gap = lines[4:7]
  assert linear.startswith("- linear: mean +1.00, 95% CI [1.00, 1.00], n = 3")
  assert "linear here ends higher than linear in toy by 1.00 points" in linear
  assert relu6.startswith(f"- relu6: mean +1.00, 95% CI [{1 - T_975_2 / math.sqrt(3):.2f}, "
                          f"{1 + T_975_2 / math.sqrt(3):.2f}], n = 3")
  assert "not separable at 3 seeds" in relu6
  # The gap relu6 − linear: here −20, −19, −18; there −19, −19, −19.
  assert gap.startswith("- (relu6 − linear) here minus there: mean +0.00")
  assert "(seed 0: -1.00, seed 1: +0.00, seed 2: +1.00)" in gap
  assert "## Against" not in build(here)  # only when asked


def test_setup_line_gives_the_range_when_variants_change_size_or_budget(tmp_path):
  write_record(tmp_path, ["short", "long"], seeds=(0,))
  write_run(tmp_path, "short", 0, [90.0], steps=100, image_size=32)
  write_run(tmp_path, "long", 0, [95.0], steps=200, image_size=56)
  assert "at 32 to 56 px (by variant)" in build(tmp_path)
  assert "100 to 200 steps (by variant) of global batch 64" in build(tmp_path)


def test_setup_line_gives_one_value_when_all_runs_share_it(tmp_path):
  write_record(tmp_path, ["a", "b"], seeds=(0,))
  for variant in ("a", "b"):
    write_run(tmp_path, variant, 0, [90.0], steps=100)
  assert "at 32 px, eval split `test`, 100 steps of global batch 64" in build(tmp_path)


def test_recorded_paths_are_relative_to_the_current_directory(tmp_path, monkeypatch):
  """A sweep run with absolute paths under the checkout reads as the README's
  `runs/<name>` and `experiments/<name>`: no machine's directory in the report."""
  monkeypatch.chdir(tmp_path)
  here, there = tmp_path / "runs" / "toy", tmp_path / "runs" / "other"
  for workdir in (here, there):
    workdir.mkdir(parents=True)
    write_record(workdir, ["a", "b"], seeds=(0,), compare_to="a", command=(
        f"python -m mobilenet_jax.ablate --sweep experiments/toy/sweep.py --workdir {workdir} "
        f"--out={tmp_path / 'experiments' / 'toy'} --set data_dir={tmp_path / 'data'} "
        "--set other_dir=gs://bucket/x/y"))
    for variant in ("a", "b"):
      write_run(workdir, variant, 0, [90.0])
  out = tmp_path / "experiments" / "toy"
  text = open(report.write_report(str(here), str(out), against=str(there))).read()
  assert ("- Command: `python -m mobilenet_jax.ablate --sweep experiments/toy/sweep.py "
          "--workdir runs/toy --out=experiments/toy --set data_dir=data "
          "--set other_dir=gs://bucket/x/y`") in text
  assert " runs/toy --against runs/other`)" in text  # the report command
  assert "The same variants in `runs/other` (toy: `python -m" in text
  assert str(tmp_path) not in text
  # Relative paths stay as given; outside the current directory they climb.
  assert report.portable_path("runs/x") == "runs/x"
  assert report.portable_path("/srv/sweeps/x", cwd="/srv/checkout") == "../sweeps/x"


def add_ptq(workdir, variant, seed, per_channel, per_tensor):
  path = workdir / variant / f"seed_{seed}" / "results.json"
  result = json.loads(path.read_text())
  result.update(eval_top1_ptq_per_channel=per_channel / 100,
                eval_top1_ptq_per_tensor=per_tensor / 100)
  path.write_text(json.dumps(result))


def test_precision_section_pairs_int8_with_its_own_float_run(tmp_path):
  """Per seed: int8 - float of the same run (QAT: of the run it started from),
  and that cost against the reference's. a loses 1 point to per-tensor int8,
  b loses 4, 5, 6: b loses 4 more than a on average, separably."""
  write_record(tmp_path, ["a", "b", "a_qat", "b_qat", "a_ft"], compare_to="a",
               plot="precision", precision={"qat": {"a": "a_qat", "b": "b_qat"},
                                            "fine_tune": {"a": "a_ft"}})
  for seed in range(3):
    write_run(tmp_path, "a", seed, [90.0 + seed])
    add_ptq(tmp_path, "a", seed, 90.0 + seed, 89.0 + seed)
    write_run(tmp_path, "b", seed, [80.0])
    add_ptq(tmp_path, "b", seed, 80.0, 76.0 - seed)
    write_run(tmp_path, "a_qat", seed, [90.5 + seed])
    write_run(tmp_path, "b_qat", seed, [79.0])
    write_run(tmp_path, "a_ft", seed, [91.0 + 0.5 * seed])
  text = build(tmp_path)
  precision = section(text, "Precision")
  assert ("| a | 91.00 ± 1.00 (3) | 91.00 ± 1.00 (3) | 90.00 ± 1.00 (3) | "
          "91.50 ± 1.00 (3) | 91.50 ± 0.50 (3) |") in precision
  assert "| b | 80.00 ± 0.00 (3) |" in precision  # no fine-tune: an empty cell
  # QAT against the float fine-tune: -0.5, 0, +0.5
  assert "- a, int8 QAT − float fine-tuned: mean +0.00, 95% CI [-1.24, 1.24]" in precision
  # Against a, b's QAT cost is b_qat - b (no fine-tune), a's a_qat - a_ft: -1 - 0
  assert "- int8 QAT: (b) − (a): mean -1.00" in precision
  assert "- a, int8 PTQ per-tensor − float: mean -1.00, 95% CI [-1.00, -1.00]" in precision
  assert "**a in int8 QAT gains 0.50 points" in precision
  assert "**b in int8 QAT loses 1.00 points" in precision
  assert ("- int8 PTQ per-tensor: (b) − (a): mean -4.00, 95% CI [-6.48, -1.52], n = 3"
          in precision)
  assert "**b's int8 PTQ per-tensor − float is 4.00 points below a's" in precision
  assert "int8 PTQ per-channel: (b) − (a): mean +0.00" in precision
  assert "toy_precision.png" in text and os.path.exists(tmp_path / "toy_precision.png")
