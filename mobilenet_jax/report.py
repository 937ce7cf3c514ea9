"""A sweep's report, built only from its runs' results.json files.

  python -m mobilenet_jax.report runs/bottleneck_activation \
      --out experiments/bottleneck_activation

Writes report.md (a table of mean +- std over seeds per variant, the command,
commit, date, device and dataset, and a conclusion that says only what the
spread over seeds supports) and one PNG plot for the sweep's question. A
missing or unreadable results.json is named in the report and skipped.
"""

import datetime
import glob
import json
import math
import os
import statistics
import textwrap
from typing import Dict, List, Tuple

from absl import app, flags

FLAGS = flags.FLAGS

MODEL_LABELS = {"mobilenet_v1": "MobileNetV1", "mobilenet_v2": "MobileNetV2"}


# --------------------------------------------------------------- reading ---

def load_record(workdir: str) -> dict:
  """sweep.json as ablate wrote it, or what the directories imply."""
  path = os.path.join(workdir, "sweep.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  variants = sorted(d for d in os.listdir(workdir)
                    if os.path.isdir(os.path.join(workdir, d)))
  return {"name": os.path.basename(os.path.normpath(workdir)), "question": "",
          "plot": "curves", "variants": variants, "command": "(unknown)"}


def load_runs(workdir: str, variants: List[str]) -> Tuple[Dict[str, List[dict]], List[str]]:
  """({variant: [results of each finished seed]}, [problems, by run name])."""
  runs, problems = {}, []
  for variant in variants:
    runs[variant] = []
    for run_dir in sorted(glob.glob(os.path.join(workdir, variant, "seed_*"))):
      name = f"{variant}/{os.path.basename(run_dir)}"
      path = os.path.join(run_dir, "results.json")
      if not os.path.exists(path):
        problems.append(f"{name}: no results.json (unfinished or failed); skipped")
        continue
      try:
        with open(path) as f:
          result = json.load(f)
        float(result["eval_top1"])
      except (ValueError, KeyError, TypeError) as e:
        problems.append(f"{name}: results.json unreadable "
                        f"({type(e).__name__}: {e}); skipped")
        continue
      result["_mtime"] = os.path.getmtime(path)
      runs[variant].append(result)
  return runs, problems


# ------------------------------------------------------------ statistics ---

def stats(values: List[float]) -> dict:
  """mean, sample standard deviation (0 for one value) and n."""
  n = len(values)
  return {"mean": statistics.fmean(values) if n else float("nan"),
          "std": statistics.stdev(values) if n > 1 else 0.0, "n": n}


def summarize(results: List[dict]) -> dict:
  return {"top1": stats([100 * r["eval_top1"] for r in results]),
          "loss": stats([r["eval_loss"] for r in results]),
          "time": stats([r["train_time_s"] for r in results]),
          "params": results[0]["params"] if results else None,
          "madds": results[0]["madds"] if results else None,
          "model": results[0]["config"]["model"]["name"] if results else None}


def compare(best: dict, other: dict) -> Tuple[float, float]:
  """(difference of mean top-1, standard error of that difference)."""
  a, b = best["top1"], other["top1"]
  se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
  return a["mean"] - b["mean"], se


def conclusion(summaries: Dict[str, dict]) -> List[str]:
  """What the numbers support, variant by variant against the best."""
  done = {k: v for k, v in summaries.items() if v["top1"]["n"]}
  if len(done) < 2:
    return ["Fewer than two variants have finished runs: nothing to compare."]
  ranked = sorted(done, key=lambda k: -done[k]["top1"]["mean"])
  best = ranked[0]
  lines = [f"Highest mean top-1: **{best}** ({fmt(done[best]['top1'], 2)}%)."]
  for other in ranked[1:]:
    diff, se = compare(done[best], done[other])
    if min(done[best]["top1"]["n"], done[other]["top1"]["n"]) < 2:
      verdict = "one seed only, so the seed spread is unknown: no claim"
    elif diff > 2 * se:
      verdict = (f"more than twice the standard error of the difference ({se:.2f}): "
                 "larger than the seed spread")
    elif diff > se:
      verdict = (f"between one and two standard errors ({se:.2f}): suggestive, "
                 "not conclusive at this number of seeds")
    else:
      verdict = (f"within one standard error ({se:.2f}): not distinguishable "
                 "from seed noise here")
    lines.append(f"- {best} vs {other}: {diff:+.2f} points, {verdict}.")
  return lines


# -------------------------------------------------------------- writing ---

def fmt(s: dict, digits: int) -> str:
  return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def table(summaries: Dict[str, dict]) -> List[str]:
  lines = ["| variant | params | MAdds | top-1 (%) | eval loss | train time (s) | n |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for variant, s in summaries.items():
    if not s["top1"]["n"]:
      lines.append(f"| {variant} | | | (no finished runs) | | | 0 |")
      continue
    lines.append(f"| {variant} | {s['params']:,} | {s['madds'] / 1e6:.2f}M | "
                 f"{fmt(s['top1'], 2)} | {fmt(s['loss'], 4)} | "
                 f"{s['time']['mean']:.0f} | {s['top1']['n']} |")
  return lines


def setup_lines(record: dict, runs: Dict[str, List[dict]]) -> List[str]:
  results = [r for rs in runs.values() for r in rs]
  if not results:
    return []
  first = results[0]
  config = first["config"]
  date = datetime.datetime.fromtimestamp(
      max(r["_mtime"] for r in results), datetime.timezone.utc)
  return [
      f"- Command: `{record.get('command', '(unknown)')}`",
      f"- Code: commit `{record.get('commit', 'unknown')}` when the sweep began; runs finished by "
      f"{date:%Y-%m-%d %H:%M} UTC",
      f"- Device: {first['device_kind']} x {first['num_devices']} "
      f"({first.get('num_processes', 1)} process)",
      f"- Data: `{config['dataset']}` at {config['image_size']} px "
      f"(base size; variants may change it), eval split `{config['eval_split']}`, "
      f"{first['steps']} steps of global batch {first['global_batch_size']}",
      f"- Seeds: {', '.join(str(s) for s in record.get('seeds', []))}",
  ]


def plot(record: dict, runs: Dict[str, List[dict]], summaries: Dict[str, dict],
         out: str) -> str:
  """One figure for the sweep's question; returns its file name."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
  dataset = next((r["config"]["dataset"] for rs in runs.values() for r in rs), "")
  if record.get("plot") == "madds":
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
  ax.set_ylabel(f"top-1 on {dataset} eval (%)")
  ax.set_title(textwrap.fill(record.get("question") or record["name"], 70),
               fontsize=9)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, title="mean ± std over seeds", title_fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, name))
  plt.close(fig)
  return name


def write_report(workdir: str, out: str = None) -> str:
  """Writes report.md and the plot into `out`; returns report.md's path."""
  out = out or workdir
  os.makedirs(out, exist_ok=True)
  record = load_record(workdir)
  runs, problems = load_runs(workdir, record["variants"])
  summaries = {v: summarize(rs) for v, rs in runs.items()}
  lines = [f"# {record['name']}", ""]
  if record.get("question"):
    lines += [record["question"], ""]
  lines += setup_lines(record, runs) + [""] + table(summaries) + [""]
  lines += ["## Conclusion", ""] + conclusion(summaries) + [""]
  if record.get("notes"):
    lines += ["## Caveats", ""] + [f"- {n}" for n in record["notes"]] + [""]
  if any(rs for rs in runs.values()):
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


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m mobilenet_jax.report SWEEP_DIR [--out DIR]")
  print(write_report(argv[1], FLAGS.out))


if __name__ == "__main__":
  define_flags()
  app.run(main)
