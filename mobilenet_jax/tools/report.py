"""A sweep's report, built only from its runs' results.json files.

  python -m mobilenet_jax.tools.report runs/bottleneck_activation \
      --out experiments/bottleneck_activation

Writes report.md and one PNG plot for the sweep's question (sweep key `plot`:
eval curves, top-1 against multiply-adds, a gap, or top-1 by precision). report.md has the
setup (command, commit, date, device, data, seeds), a table per variant (final
top-1 mean ± std, its 95% t-interval, n) and then, with variants compared
paired by seed (a sweep trains every variant on the same seeds):
  - Final top-1: every variant against a reference (the sweep's `compare_to`,
    else the highest mean), each seed's difference listed;
  - Learning speed: top-1 at 10/25/50/100% of the steps, and the pairs again
    at the earliest of those, so that "learns slower" and "ends lower" stay apart;
  - Convergence: which runs' last two evaluations are more than 1 point apart;
  - Gap (sweep key `gap`): the paired difference between two values of one
    knob (`split`) at each value of another (`x`), and whether it grows as x
    shrinks;
  - Precision (sweep key `precision`): each float variant's top-1 as int8
    after post-training quantization and after QAT, what int8 costs paired by
    seed, and whether that cost differs from the reference's.
Every conclusion is what the 95% interval supports, no more. A missing or
unreadable results.json is named in the report and skipped.

Paths in the report (the recorded command, the --against text) are written
relative to the current directory, as the README's commands give them
(`runs/<name>`, `experiments/<name>`), never as the absolute path of the
machine the sweep ran on; URLs (gs://...) stay as they are.
"""

import datetime
import glob
import os
import re
import statistics
import textwrap
from typing import Dict, List, Optional, Tuple

from absl import app, flags

from mobilenet_jax import records
from mobilenet_jax.seed_stats import (
    CONVERGED_POINTS, FRACTIONS, ci, converged, early_percent, final_top1, fmt, gap_trend,
    gaps, minus, paired, speed_verdict, stats, top1_at, verdict)

FLAGS = flags.FLAGS

MODEL_LABELS = {"mobilenet_v1": "MobileNetV1", "mobilenet_v2": "MobileNetV2"}


# ----------------------------------------------------------------- paths ---

# An absolute local path in a command line: a "/" that begins an argument or a
# flag's value (--workdir=/x, --set data_dir=/x), not one inside a URL (gs://b/x).
ABSOLUTE_ARG = re.compile(r"(?<![^\s=])/(?!/)\S*")


def portable_path(path: str, cwd: Optional[str] = None) -> str:
  """`path` as the report writes it: relative to `cwd` (the current directory)
  when absolute, so `/.../mobilenet_jax/runs/x` run from the checkout reads
  `runs/x`; a path outside it climbs (`../x`) rather than name the machine's
  directories. Relative paths and URLs are kept as given."""
  if not os.path.isabs(path):
    return path
  try:
    return os.path.relpath(path, cwd or os.getcwd())
  except ValueError:  # another drive (Windows): no relative path exists
    return os.path.basename(os.path.normpath(path))


def portable_command(command: str, cwd: Optional[str] = None) -> str:
  """The recorded command with each absolute path argument made portable."""
  return ABSOLUTE_ARG.sub(lambda m: portable_path(m.group(0), cwd), command)


# --------------------------------------------------------------- reading ---

def load_record(workdir: str) -> dict:
  """sweep.json as ablate wrote it, or what the directories imply: a variant
  is a directory with seed_* runs (not, e.g., the compilation cache)."""
  record = records.read_sweep(workdir)
  if record is not None:
    return record
  variants = sorted(d for d in os.listdir(workdir)
                    if glob.glob(os.path.join(workdir, d, "seed_*")))
  return {"name": os.path.basename(os.path.normpath(workdir)), "question": "",
          "plot": "curves", "variants": variants, "command": "(unknown)"}


def load_run(run_dir: str) -> dict:
  """One results.json, checked for what the report reads; `_seed` comes from
  the directory name (seed_<seed>), as ablate names it."""
  result = records.read_results(run_dir)
  # What the sections read: a missing or non-numeric value fails here, naming
  # this run, rather than later in the middle of the report.
  float(result["eval_top1"])
  int(result["steps"])
  for h in result["history"]:
    int(h["step"])
    float(h["eval_top1"])
  result["history"] = sorted(result["history"], key=lambda h: h["step"])
  result["_seed"] = int(os.path.basename(run_dir).split("_", 1)[1])
  return result


def load_runs(workdir: str, variants: List[str]) -> Tuple[Dict[str, List[dict]], List[str]]:
  """({variant: [results of each finished seed]}, [problems, by run name])."""
  runs, problems = {}, []
  for variant in variants:
    runs[variant] = []
    for run_dir in sorted(glob.glob(os.path.join(workdir, variant, "seed_*"))):
      name = f"{variant}/{os.path.basename(run_dir)}"
      path = records.results_path(run_dir)
      if not os.path.exists(path):
        problems.append(f"{name}: no results.json (unfinished or failed); skipped")
        continue
      try:
        result = load_run(run_dir)
      except (ValueError, KeyError, TypeError, IndexError) as e:
        problems.append(f"{name}: results.json unreadable "
                        f"({type(e).__name__}: {e}); skipped")
        continue
      result["_mtime"] = os.path.getmtime(path)
      runs[variant].append(result)
    runs[variant].sort(key=lambda r: r["_seed"])
  return runs, problems


# ---------------------------------------------------------- comparisons ---

def summarize(results: List[dict]) -> dict:
  return {"top1": stats([final_top1(r) for r in results]),
          "loss": stats([r["eval_loss"] for r in results]),
          "time": stats([r["train_time_s"] for r in results]),
          "params": results[0]["params"] if results else None,
          "madds": results[0]["madds"] if results else None,
          "model": results[0]["config"]["model"]["name"] if results else None}


def reference(record: dict, runs: Dict[str, List[dict]],
              summaries: Dict[str, dict]) -> Tuple[Optional[str], str, List[str]]:
  """(the variant the others are compared with, why it is, the others), or
  (None, why nothing is compared, [])."""
  done = [v for v, rs in runs.items() if rs]
  ref = record.get("compare_to")
  if len(done) < 2:
    return None, "Fewer than two variants have finished runs: nothing to compare.", []
  if ref is not None and ref not in done:
    return None, (f"The reference variant {ref!r} (compare_to) has no finished "
                  "runs: nothing to compare."), []
  if ref is not None:
    why = "the sweep's compare_to"
  else:
    ref = max(done, key=lambda v: summaries[v]["top1"]["mean"])
    why = f"the highest mean top-1, {fmt(summaries[ref]['top1'], 2)}%"
  return ref, why, [v for v in done if v != ref]


# -------------------------------------------------------------- writing ---

def seed_list(diffs: Dict[int, float]) -> str:
  return ", ".join(f"seed {s}: {d:+.2f}" for s, d in diffs.items())


def difference(diffs: Dict[int, float]) -> Tuple[dict, str]:
  """The stats of per-seed differences and a line with them and each seed's."""
  d = stats(list(diffs.values()))
  if not diffs:
    return d, "no seed finished by both"
  return d, (f"mean {d['mean']:+.2f}, 95% CI {ci(d)}, n = {d['n']} "
             f"({seed_list(diffs)})")


def table(summaries: Dict[str, dict]) -> List[str]:
  lines = ["| variant | params | MAdds | top-1 (%) | 95% CI | eval loss | "
           "train time (s) | n |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for variant, s in summaries.items():
    if not s["top1"]["n"]:
      lines.append(f"| {variant} | | | (no finished runs) | | | | 0 |")
      continue
    lines.append(f"| {variant} | {s['params']:,} | {s['madds'] / 1e6:.2f}M | "
                 f"{fmt(s['top1'], 2)} | {ci(s['top1'])} | {fmt(s['loss'], 4)} | "
                 f"{s['time']['mean']:.0f} | {s['top1']['n']} |")
  return lines


def final_section(runs, ref, why, others) -> List[str]:
  lines = ["## Final top-1, paired by seed", ""]
  if ref is None:
    return lines + [why, ""]
  lines += [f"Each variant against **{ref}** ({why}): per seed, variant − {ref} "
            "in top-1 points on the seeds both finished; their mean, 95% "
            "t-interval and n.", ""]
  for a in others:
    d, line = difference(paired(runs[a], runs[ref], final_top1))
    lines.append(f"- {a} − {ref}: {line}. **{verdict(a, ref, d)}**")
  return lines + [""]


def against_section(runs, ref, workdir: str, other_dir: str) -> List[str]:
  """This sweep against another run of the same variants and seeds (an
  artifact check: other ops, another framework), paired by seed: each common
  variant, and each variant's difference from `ref`, here minus there."""
  other = load_record(other_dir)
  theirs, _ = load_runs(other_dir, other["variants"])
  name = other["name"]
  common = [v for v in runs if runs[v] and theirs.get(v)]
  here, there = portable_path(workdir), portable_path(other_dir)
  lines = [f"## Against {name}", "",
           f"The same variants in `{there}` ({name}: "
           f"`{portable_command(other.get('command', '?'))}`, "
           f"commit `{other.get('commit', 'unknown')}`), paired by seed: here minus "
           f"there, in top-1 points (`python -m mobilenet_jax.tools.report {here} "
           f"--against {there}`).", ""]
  if not common:
    return lines + ["No variant has finished runs in both: nothing to compare.", ""]
  for v in common:
    d, line = difference(paired(runs[v], theirs[v], final_top1))
    lines.append(f"- {v}: {line}. **{verdict(f'{v} here', f'{v} in {name}', d)}**")
  if ref in common:
    for v in (v for v in common if v != ref):
      gap = lambda rs: paired(rs[v], rs[ref], final_top1)
      here, there = gap(runs), gap(theirs)
      d, line = difference(minus(here, there))
      lines.append(f"- ({v} − {ref}) here minus there: {line}. **"
                   + verdict(f"{v} − {ref} here", f"{v} − {ref} in {name}", d) + "**")
  return lines + [""]


PTQ_COLUMNS = (("int8 PTQ per-channel", "eval_top1_ptq_per_channel"),
               ("int8 PTQ per-tensor", "eval_top1_ptq_per_tensor"))
QAT_COLUMN = "int8 QAT"
FINE_TUNE_COLUMN = "float fine-tuned"  # QAT's schedule without quantization
PRECISION_COLUMNS = (("float",) + tuple(c for c, _ in PTQ_COLUMNS)
                     + (QAT_COLUMN, FINE_TUNE_COLUMN))


def present_columns(values: Dict[str, dict]) -> List[str]:
  """The PRECISION_COLUMNS that some variant of `values` has runs for."""
  return [c for c in PRECISION_COLUMNS if any(cols.get(c) for cols in values.values())]


def precision_values(runs: Dict[str, List[dict]], precision: dict) -> Dict[str, dict]:
  """{float variant: {precision: {seed: top-1 %}}}: the float runs' own
  evaluation and their post-training int8 ones, the QAT variant fine-tuned
  from each and the same fine-tune in float (sweep key precision:
  dict(qat={float: qat}, fine_tune={float: float fine-tune}))."""
  derived = {key: precision.get(key, {}) for key in ("qat", "fine_tune")}
  others = {v for d in derived.values() for v in d.values()}
  out = {}
  for variant in (v for v in runs if v not in others):
    columns = {"float": {r["_seed"]: final_top1(r) for r in runs[variant]}}
    for label, key in PTQ_COLUMNS:
      columns[label] = {r["_seed"]: 100 * r[key] for r in runs[variant] if key in r}
    for label, key in ((QAT_COLUMN, "qat"), (FINE_TUNE_COLUMN, "fine_tune")):
      if variant in derived[key]:
        columns[label] = {r["_seed"]: final_top1(r) for r in runs.get(derived[key][variant], [])}
    out[variant] = columns
  return out


def cost_verdict(what: str, d: dict) -> str:
  """What the interval of (int8 - float) differences supports, in words."""
  if d["n"] < 2:
    return f"{what}: {d['n']} paired seed(s), no interval: no claim."
  interval = f"95% CI [{d['lo']:.2f}, {d['hi']:.2f}], {d['n']} seeds"
  if d["hi"] < 0:
    return f"{what} loses {-d['mean']:.2f} points ({interval})."
  if d["lo"] > 0:
    return f"{what} gains {d['mean']:.2f} points ({interval})."
  return f"{what}: no difference the seeds can show ({interval})."


def cost_difference_verdict(a: str, b: str, label: str, d: dict) -> str:
  """What the interval of (a's int8 - float) - (b's) supports, in words."""
  if d["n"] < 2:
    return f"{a} vs {b} in {label}: {d['n']} paired seed(s), no interval: no claim."
  interval = f"95% CI [{d['lo']:.2f}, {d['hi']:.2f}], {d['n']} seeds"
  if d["lo"] > 0:
    return (f"{a}'s {label} − float is {d['mean']:.2f} points above {b}'s "
            f"({interval}).")
  if d["hi"] < 0:
    return (f"{a}'s {label} − float is {-d['mean']:.2f} points below {b}'s "
            f"({interval}).")
  return (f"{a}'s and {b}'s {label} − float do not differ as far as the seeds can "
          f"show ({interval}).")


def precision_section(runs: Dict[str, List[dict]], precision: dict,
                      ref: Optional[str]) -> List[str]:
  values = precision_values(runs, precision)
  columns = present_columns(values)
  tuned = FINE_TUNE_COLUMN in columns
  int8_labels = [c for c in columns if c not in ("float", FINE_TUNE_COLUMN)]
  lines = ["## Precision", "",
           "Top-1 (%) of each float variant, mean ± std over seeds (n): as trained, as "
           "int8 after post-training quantization (PTQ) of the same weights, and "
           "(where run) after quantization-aware training (QAT) from them.", "",
           "| variant | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
  for variant, cols in values.items():
    cells = [f"{fmt(stats(list(cols[l].values())), 2)} ({len(cols[l])})" if cols.get(l)
             else "" for l in columns]
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  costs = {v: {l: minus(cols[l], cols["float"]) for l in int8_labels if cols.get(l)}
           for v, cols in values.items()}
  lines += ["", "What int8 costs, paired by seed: int8 − float top-1 points of the same "
            "run (QAT: the fine-tuned run against the float run it started from).", ""]
  for v, by_label in costs.items():
    for label, diffs in by_label.items():
      d, line = difference(diffs)
      lines.append(f"- {v}, {label} − float: {line}. **{cost_verdict(f'{v} in {label}', d)}**")
  if tuned:
    lines += ["", f"QAT against the same fine-tune in float ({FINE_TUNE_COLUMN}: QAT's "
              "schedule without quantization), paired by seed: what quantization costs "
              "once the extra epochs are accounted for.", ""]
    for v, cols in values.items():
      if cols.get(QAT_COLUMN) and cols.get(FINE_TUNE_COLUMN):
        # QAT's own cost, from here on (and against compare_to below)
        costs[v][QAT_COLUMN] = minus(cols[QAT_COLUMN], cols[FINE_TUNE_COLUMN])
        d, line = difference(costs[v][QAT_COLUMN])
        lines.append(f"- {v}, {QAT_COLUMN} − {FINE_TUNE_COLUMN}: {line}. "
                     f"**{cost_verdict(f'{v} in {QAT_COLUMN} (against its float fine-tune)', d)}**")
  if ref in costs:
    lines += ["", f"Is the cost different from **{ref}**'s? Per seed, (int8 − float) of "
              f"the variant minus (int8 − float) of {ref} (for QAT, where a float "
              "fine-tune was run, int8 QAT − float fine-tuned); positive: int8 costs "
              "the variant less.", ""]
    for v in (v for v in costs if v != ref):
      for label in (l for l in costs[v] if l in costs[ref]):
        d, line = difference(minus(costs[v][label], costs[ref][label]))
        lines.append(f"- {label}: ({v}) − ({ref}): {line}. **"
                     + cost_difference_verdict(v, ref, label, d) + "**")
  return lines + [""]


def speed_table(runs: Dict[str, List[dict]]) -> List[str]:
  lines = ["| variant | " + " | ".join(f"{p}% of steps" for p in FRACTIONS) + " |",
           "|---|" + "---:|" * len(FRACTIONS)]
  for variant, rs in runs.items():
    if not rs:
      continue
    cells = []
    for p in FRACTIONS:
      got = [x for x in (top1_at(r, p) for r in rs) if x]
      if not got:
        cells.append("no evaluation yet")
        continue
      steps = sorted({step for step, _ in got})
      cell = (f"{fmt(stats([v for _, v in got]), 2)} "
              f"(step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))})")
      cells.append(cell + (f", n = {len(got)}" if len(got) < len(rs) else ""))
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  return lines


def speed_section(runs, ref, why, others) -> List[str]:
  lines = ["## Learning speed", "",
           "Mean ± std top-1 (%) over seeds at the last evaluation at or before "
           "each fraction of the training steps (the step used in brackets).", ""]
  lines += speed_table(runs) + [""]
  if ref is None:
    return lines + [why, ""]
  percent = early_percent([r for rs in runs.values() for r in rs])
  if percent is None:
    return lines + ["No fraction before the end at which every run had been "
                    "evaluated: learning speed cannot be told apart from the final "
                    "result here.", ""]
  early_top1 = lambda r: top1_at(r, percent)[1]
  lines += [f"Paired by seed against **{ref}** at {percent}% of the steps (the "
            "earliest fraction at which every run had been evaluated) and at "
            "the end:", ""]
  for a in others:
    early, early_line = difference(paired(runs[a], runs[ref], early_top1))
    end, end_line = difference(paired(runs[a], runs[ref], final_top1))
    lines.append(f"- {a} − {ref}: at {percent}%: {early_line}; at the end: "
                 f"{end_line}. **{speed_verdict(a, ref, early, end, percent)}**")
  return lines + [""]


def convergence_section(runs: Dict[str, List[dict]]) -> List[str]:
  lines = ["## Convergence", "",
           f"A run counts as converged when its last two evaluations are within "
           f"{CONVERGED_POINTS:g} top-1 point of each other.", ""]
  moving = []
  for variant, rs in runs.items():
    if not rs:
      continue
    passed = sum(converged(r) for r in rs)
    lines.append(f"- {variant}: {passed} of {len(rs)} runs converged")
    for r in rs:
      if converged(r):
        continue
      h = r["history"]
      if len(h) < 2:
        moving.append(f"- {variant}/seed_{r['_seed']}: a single evaluation, so "
                      "convergence cannot be checked")
        continue
      a, b = 100 * h[-2]["eval_top1"], 100 * h[-1]["eval_top1"]
      moving.append(f"- {variant}/seed_{r['_seed']}: {a:.2f}% at step {h[-2]['step']}, "
                    f"then {b:.2f}% at step {h[-1]['step']} ({b - a:+.2f} points)")
  if moving:
    lines += ["", "Not converged: the final figure of these runs may still be moving.",
              ""] + moving
  else:
    lines += ["", "Every run passes."]
  return lines + [""]


def gap_section(runs: Dict[str, List[dict]], gap: dict) -> List[str]:
  by_x, problems = gaps(runs, gap)
  plus, minus = gap["minus"]
  lines = [f"## Gap: {plus} − {minus} by {gap.get('xlabel', gap['x'])}", "",
           f"Runs grouped by `{gap['x']}` and `{gap['split']}` from their own "
           f"configs; per seed, top-1 of {plus} minus top-1 of {minus} at the "
           "same x, in points.", "",
           f"| {gap['x']} | {plus} − {minus} (points) | 95% CI | n | per seed |",
           "|---:|---:|---:|---:|---|"]
  for x, diffs in by_x.items():
    d = stats(list(diffs.values()))
    mean = f"{d['mean']:+.2f}" if diffs else "(no seed with both)"
    lines.append(f"| {x} | {mean} | {ci(d)} | {d['n']} | {seed_list(diffs)} |")
  lines += [""] + [f"- {p}" for p in problems] + ([""] if problems else [])
  return lines + [gap_trend(by_x, gap), ""]


def span(values, unit: str) -> str:
  """"32 px" when every run has the same value, "32 to 56 px (by variant)" when
  not: the setup line must hold for every run, not only the first."""
  values = sorted(set(values))
  if len(values) == 1:
    return f"{values[0]} {unit}"
  return f"{values[0]} to {values[-1]} {unit} (by variant)"


def setup_lines(record: dict, runs: Dict[str, List[dict]]) -> List[str]:
  results = [r for rs in runs.values() for r in rs]
  if not results:
    return []
  first = results[0]
  config = first["config"]
  date = datetime.datetime.fromtimestamp(
      max(r["_mtime"] for r in results), datetime.timezone.utc)
  sizes = span((r["config"]["image_size"] for r in results), "px")
  steps = span((r["steps"] for r in results), "steps")
  return [
      f"- Command: `{portable_command(record.get('command', '(unknown)'))}`",
      f"- Code: commit `{record.get('commit', 'unknown')}` when the sweep began; runs finished by "
      f"{date:%Y-%m-%d %H:%M} UTC",
      f"- Device: {first['device_kind']} x {first['num_devices']} "
      f"({first.get('num_processes', 1)} process)",
      f"- Data: `{config['dataset']}` at {sizes}, eval split `{config['eval_split']}`, "
      f"{steps} of global batch {first['global_batch_size']}",
      f"- Seeds: {', '.join(str(s) for s in record.get('seeds', []))}",
  ]


def plot_gap(ax, runs: Dict[str, List[dict]], gap: dict):
  """The paired gap per x with its 95% interval, against a line at 0."""
  by_x, _ = gaps(runs, gap)
  points = [(x, stats(list(d.values()))) for x, d in reversed(by_x.items()) if d]
  xs = [x for x, _ in points]
  ys = [s["mean"] for _, s in points]
  half = [s["hi"] - s["mean"] if s["n"] >= 2 else 0.0 for _, s in points]
  ax.axhline(0, color="black", linewidth=0.8)
  ax.errorbar(xs, ys, yerr=half, marker="o", capsize=4,
              label=f"{gap['minus'][0]} − {gap['minus'][1]}")
  ax.set_xlabel(gap.get("xlabel", gap["x"]))
  ax.set_ylabel("top-1 difference (points)")


def plot_precision(ax, runs: Dict[str, List[dict]], precision: dict):
  """Grouped bars: each float variant's top-1 as float and as int8."""
  values = precision_values(runs, precision)
  labels = present_columns(values)
  width = 0.8 / len(labels)
  low = 100.0
  for i, label in enumerate(labels):
    xs, means, stds = [], [], []
    for j, cols in enumerate(values.values()):
      if cols.get(label):
        s = stats(list(cols[label].values()))
        xs.append(j - 0.4 + (i + 0.5) * width)
        means.append(s["mean"])
        stds.append(s["std"])
        low = min(low, s["mean"] - s["std"])
    ax.bar(xs, means, width, yerr=stds, capsize=2, label=label)
  ax.set_xticks(range(len(values)), list(values))
  ax.set_ylim(max(0.0, low - 5), 100)
  ax.set_xlabel("variant (as trained in float; QAT fine-tuned from it)")


def plot(record: dict, runs: Dict[str, List[dict]], summaries: Dict[str, dict],
         out: str) -> str:
  """One figure for the sweep's question; returns its file name."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
  dataset = next((r["config"]["dataset"] for rs in runs.values() for r in rs), "")
  ax.set_ylabel(f"top-1 on {dataset} eval (%)")
  legend = "mean ± std over seeds"
  if record.get("plot") == "gap" and record.get("gap"):
    name = f"{record['name']}_gap.png"
    plot_gap(ax, runs, record["gap"])
    legend = "mean of per-seed differences, 95% t-interval"
  elif record.get("plot") == "madds":
    name = f"{record['name']}_top1_vs_madds.png"
    for model in sorted({s["model"] for s in summaries.values() if s["model"]}):
      points = sorted((s["madds"] / 1e6, s["top1"]["mean"], s["top1"]["std"], v)
                      for v, s in summaries.items() if s["model"] == model)
      xs, ys, es, labels = zip(*points)
      ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3,
                  label=MODEL_LABELS.get(model, model))
      for x, y, label in zip(xs, ys, labels):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, -10),
                    fontsize=7)
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("multiply-adds per image (millions, log scale)")
  elif record.get("plot") == "precision" and record.get("precision"):
    name = f"{record['name']}_precision.png"
    plot_precision(ax, runs, record["precision"])
  else:
    name = f"{record['name']}_eval_curves.png"
    for variant, results in runs.items():
      if not results:
        continue
      steps = [h["step"] for h in results[0]["history"]]
      curves = [[100 * h["eval_top1"] for h in r["history"]] for r in results
                if [h["step"] for h in r["history"]] == steps]
      mean = [statistics.fmean(c) for c in zip(*curves)]
      std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in zip(*curves)]
      line, = ax.plot(steps, mean, marker=".", label=f"{variant} (n={len(curves)})")
      ax.fill_between(steps, [m - s for m, s in zip(mean, std)],
                      [m + s for m, s in zip(mean, std)], alpha=0.2,
                      color=line.get_color())
    ax.set_xlabel("training step")
  ax.set_title(textwrap.fill(record.get("question") or record["name"], 70),
               fontsize=9)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, title=legend, title_fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, name))
  plt.close(fig)
  return name


def write_report(workdir: str, out: str = None, against: str = None) -> str:
  """Writes report.md and the plot into `out`; returns report.md's path.
  With `against` (another sweep's workdir), adds the paired comparison with it."""
  out = out or workdir
  os.makedirs(out, exist_ok=True)
  record = load_record(workdir)
  runs, problems = load_runs(workdir, record["variants"])
  summaries = {v: summarize(rs) for v, rs in runs.items()}
  ref, why, others = reference(record, runs, summaries)
  lines = [f"# {record['name']}", ""]
  if record.get("question"):
    lines += [record["question"], ""]
  lines += setup_lines(record, runs) + [""] + table(summaries) + [""]
  lines += final_section(runs, ref, why, others)
  if record.get("precision") and any(runs.values()):
    lines += precision_section(runs, record["precision"], ref)
  if against:
    lines += against_section(runs, ref, workdir, against)
  if any(runs.values()):
    lines += speed_section(runs, ref, why, others) + convergence_section(runs)
  if record.get("gap") and any(runs.values()):
    lines += gap_section(runs, record["gap"])
  if record.get("notes"):
    lines += ["## Caveats", ""] + [f"- {n}" for n in record["notes"]] + [""]
  if any(runs.values()):
    lines += [f"![{record['name']}]({plot(record, runs, summaries, out)})", ""]
  if problems:
    lines += ["## Runs left out", ""] + [f"- {p}" for p in problems] + [""]
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def define_flags():
  """The command's flags, defined only when it runs: ablate imports this module
  for write_report and defines its own --out."""
  flags.DEFINE_string("out", None, "Where report.md and the plots go (default: the "
                      "sweep directory).")
  flags.DEFINE_string("against", None, "Another sweep's directory with the same "
                      "variants and seeds (e.g. the same runs with other ops): adds "
                      "a section comparing the two, paired by seed.")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m mobilenet_jax.tools.report SWEEP_DIR [--out DIR] "
                         "[--against OTHER_SWEEP_DIR]")
  print(write_report(argv[1], FLAGS.out, FLAGS.against))


def run():
  """The `mobilenet-report` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
