"""MobileNetV2's Figure 1: a spiral through a random embedding, ReLU and back.

  python -m mobilenet_jax.studies.manifold --out experiments/manifold

The 2-D spiral is embedded into n dimensions by a random matrix T, passed
through an activation and projected back by the pseudo-inverse of T. The paper
shows only pictures; this measures the reconstruction error over random T for
each n and activation, and writes report.md, spirals.png and error_vs_n.png.
Same flags, same bytes: the report has no dates or machine-dependent text.
"""

import os
from typing import Dict, List

import numpy as np
from absl import flags

from mobilenet_jax import cli
from mobilenet_jax.errors import ConfigError, check_choice

FLAGS = flags.FLAGS

ACTIVATIONS = ("relu", "relu6", "linear")
MAX_RADIUS = 4.0  # ReLU6 clips at 6: its result depends on this scale
BOOTSTRAP = 10_000
TINY = 1e-20  # below this an error is float round-off; its digits depend on the BLAS


# ------------------------------------------------------------ the maths ---

def spiral(num_points: int) -> np.ndarray:
  """Two turns of r = t, scaled to MAX_RADIUS and centred: (num_points, 2)."""
  t = np.linspace(0.0, 4 * np.pi, num_points)
  r = MAX_RADIUS * t / t[-1]
  points = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
  return points - points.mean(axis=0)


def activate(y: np.ndarray, activation: str) -> np.ndarray:
  check_choice("activation", activation, ACTIVATIONS)
  if activation == "relu":
    return np.maximum(y, 0.0)
  if activation == "relu6":
    return np.clip(y, 0.0, 6.0)
  return y


def reconstruct(points: np.ndarray, n: int, activation: str,
                rng: np.random.Generator) -> np.ndarray:
  """act(points @ T) @ pinv(T) for T ~ Normal(0, 1) of shape (2, n)."""
  T = rng.standard_normal((2, n))
  return activate(points @ T, activation) @ np.linalg.pinv(T)


def error(points: np.ndarray, back: np.ndarray) -> float:
  """Mean squared reconstruction error over the spiral's mean squared norm."""
  return float(np.sum((points - back) ** 2, axis=1).mean()
               / np.sum(points ** 2, axis=1).mean())


def aligned_error(points: np.ndarray, back: np.ndarray) -> float:
  """error() after the best affine map of `back` onto `points`: what is lost
  beyond a rescaling (pinv undoes T, not the ReLU, which halves the scale)."""
  design = np.concatenate([back, np.ones((len(back), 1))], axis=1)
  coef, *_ = np.linalg.lstsq(design, points, rcond=None)
  return error(points, design @ coef)


def seeded(*keys: int) -> np.random.Generator:
  """One generator per (seed, n, trial, ...): results do not depend on order."""
  return np.random.default_rng(list(keys))


def trial_errors(points: np.ndarray, n: int, activation: str, trials: int,
                 seed: int, metric=error) -> np.ndarray:
  """The metric for `trials` random T; trial k uses the same T for every
  activation, so activations are compared on the same embeddings."""
  return np.array([metric(points, reconstruct(points, n, activation, seeded(seed, n, k)))
                   for k in range(trials)])


def summarize(values: np.ndarray, rng: np.random.Generator) -> dict:
  """mean, sample std, median and a 95% bootstrap percentile interval of the mean."""
  means = rng.choice(values, size=(BOOTSTRAP, len(values))).mean(axis=1)
  lo, hi = np.percentile(means, [2.5, 97.5])
  return {"mean": float(values.mean()), "std": float(values.std(ddof=1)),
          "median": float(np.median(values)), "lo": float(lo), "hi": float(hi)}


def clipped(points: np.ndarray, n: int, trials: int, seed: int) -> float:
  """The fraction of embedded coordinates x T above 6 (where ReLU6 clips)."""
  return float(np.mean([np.mean(points @ seeded(seed, n, k).standard_normal((2, n)) > 6)
                        for k in range(trials)]))


def experiment(ns: List[int], trials: int, seed: int, num_points: int) -> Dict:
  """{metric: {activation: {n: summary}}} for both metrics, and {"clipped": {n: fraction}}."""
  points = spiral(num_points)
  results = {"clipped": {n: clipped(points, n, trials, seed) for n in ns}}
  for name, metric in (("error", error), ("aligned", aligned_error)):
    results[name] = {}
    for a, activation in enumerate(ACTIVATIONS):
      results[name][activation] = {
          n: summarize(trial_errors(points, n, activation, trials, seed, metric),
                       seeded(seed, n, a, 1 + (name == "aligned"), 2 ** 31))
          for n in ns}
  return results


# -------------------------------------------------------------- writing ---

def num(v: float) -> str:
  return f"< {TINY:.0e}" if abs(v) < TINY else f"{v:.3g}"


def cell(s: dict) -> str:
  if s["hi"] < TINY:
    return f"< {TINY:.0e} (every trial)"
  return f"{num(s['mean'])} ± {num(s['std'])} [{num(s['lo'])}, {num(s['hi'])}]"


def table(by_activation: Dict[str, Dict[int, dict]], ns: List[int]) -> List[str]:
  names = list(by_activation)
  lines = ["| n | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
  for n in ns:
    lines.append(f"| {n} | " + " | ".join(cell(by_activation[a][n]) for a in names)
                 + " |")
  return lines


def conclusion(results: Dict, ns: List[int]) -> List[str]:
  """Only what the numbers show."""
  raw, aligned = results["error"], results["aligned"]
  relu = [raw["relu"][n]["mean"] for n in ns]
  falls = all(a > b for a, b in zip(relu, relu[1:]))
  lines = [f"- ReLU: mean relative error {num(relu[0])} at n={ns[0]} and "
           f"{num(relu[-1])} at n={ns[-1]}; the mean "
           + ("falls" if falls else "does not fall") + " at every step of n."]
  low = [n for n in ns if raw["relu"][n]["std"] > raw["relu"][n]["mean"]]
  if low:
    lines.append(f"- At n={', '.join(map(str, low))} the std exceeds the mean: a few "
                 "nearly singular T make pinv(T) amplify what ReLU zeroed, so the "
                 "mean there is dominated by those trials (medians: "
                 + ", ".join(f"n={n}: {num(raw['relu'][n]['median'])}" for n in low)
                 + ") and its bootstrap interval is unreliable.")
  lines.append(f"- The raw error at n={ns[-1]} ({num(relu[-1])}) is near 0.25, the error "
               "of the spiral returned at half its size: relu(z) = (z + |z|)/2 and "
               "pinv(T) undoes T, not the ReLU, so as n grows the |z| part averages "
               "out and x/2 remains (see spirals.png). After the best affine fit "
               f"of the result onto the spiral, ReLU's error goes from "
               f"{num(aligned['relu'][ns[0]]['mean'])} at n={ns[0]} to "
               f"{num(aligned['relu'][ns[-1]]['mean'])} at n={ns[-1]}: that is the "
               "information the paper's claim is about.")
  linear = max(raw["linear"][n]["hi"] for n in ns)
  lines.append("- Linear: recovers the spiral exactly up to float error "
               + (f"(every trial below {TINY:.0e})." if linear < TINY
                  else f"(largest interval bound {num(linear)})."))
  diff = {m: [results[m]["relu6"][n]["mean"] - results[m]["relu"][n]["mean"] for n in ns]
          for m in ("error", "aligned")}
  lines.append(f"- ReLU6 minus ReLU on the same T, mean over trials: {num(min(diff['error']))} "
               f"to {num(max(diff['error']))} in relative error and "
               f"{num(min(diff['aligned']))} to {num(max(diff['aligned']))} after the "
               "affine fit, over n; the two activations' 95% intervals overlap at "
               "every n in both tables. "
               if all(overlap(results[m]["relu"][n], results[m]["relu6"][n])
                      for m in ("error", "aligned") for n in ns) else
               f"- ReLU6 minus ReLU on the same T, mean over trials: "
               f"{num(min(diff['error']))} to {num(max(diff['error']))} in relative "
               "error over n; at some n the 95% intervals do not overlap. ")
  clip = results["clipped"]
  lines[-1] += (f"At radius {MAX_RADIUS:g}, at most {100 * max(clip.values()):.2g}% of "
                "the embedded coordinates exceed 6 at any n (the most at n="
                f"{max(clip, key=clip.get)}), so the clip seldom acts; a larger spiral "
                "would make it act more.")
  lines.append("- What this toy can show: how much of a 2-D manifold a ReLU after a "
               "random linear map into n dimensions loses, as n grows (the affine-fit "
               "table). What it cannot show: anything about a trained "
               "MobileNetV2, whose weights are learned, not random, and whose "
               "bottleneck layers are not inverted by a pseudo-inverse; the linear "
               "bottleneck ablation (experiments/bottleneck_activation) is the test "
               "of that.")
  return lines


def overlap(a: dict, b: dict) -> bool:
  return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]


def command(out: str, ns: List[int], trials: int, seed: int, num_points: int) -> str:
  return (f"python -m mobilenet_jax.studies.manifold --out {out} --ns {','.join(map(str, ns))} "
          f"--trials {trials} --seed {seed} --points {num_points}")


def pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def matplotlib_ticker():
  import matplotlib.ticker
  return matplotlib.ticker


def save(fig, path: str):
  # No Software key: the bytes depend only on the figure, not the version.
  fig.savefig(path, metadata={"Software": None})
  pyplot().close(fig)


def plot_spirals(ns: List[int], seed: int, num_points: int, path: str):
  """The paper's figure: the input, then what comes back for each n (one T each)."""
  plt = pyplot()
  points = spiral(num_points)
  t = np.arange(num_points)
  rows = ("relu", "relu6")
  fig, axes = plt.subplots(len(rows), len(ns) + 1, dpi=100,
                           figsize=(2.0 * (len(ns) + 1), 2.6 * len(rows)), squeeze=False)
  limit = 1.15 * np.abs(points).max()
  for row, activation in zip(axes, rows):
    panels = [("input", points)] + [
        (f"n = {n}", reconstruct(points, n, activation, seeded(seed, n, 0))) for n in ns]
    for ax, (title, xy) in zip(row, panels):
      ax.scatter(xy[:, 0], xy[:, 1], c=t, cmap="viridis", s=3)
      if title != "input":
        title += f"\nerr {num(error(points, xy))}"
      ax.set_title(title, fontsize=8)
      # Same limits everywhere, so the halved scale of ReLU's output shows.
      ax.set_xlim(-limit, limit)
      ax.set_ylim(-limit, limit)
      ax.set_aspect("equal")
      ax.set_xticks([])
      ax.set_yticks([])
    row[0].set_ylabel(activation, fontsize=9)
  fig.suptitle(f"spiral -> {'/'.join(rows)}(x T) -> pinv(T), T ~ N(0, 1) of "
               f"shape (2, n), seed {seed}", fontsize=9)
  fig.tight_layout()
  save(fig, path)


def plot_errors(results: Dict, ns: List[int], path: str):
  """Both metrics vs n on log axes, mean with its 95% interval per activation."""
  plt = pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.0), dpi=100)
  titles = {"error": "relative error", "aligned": "relative error after best affine fit"}
  for ax, (name, title) in zip(axes, titles.items()):
    for activation in ("relu", "relu6"):
      s = [results[name][activation][n] for n in ns]
      mean = np.array([x["mean"] for x in s])
      bars = np.array([[m - x["lo"] for m, x in zip(mean, s)],
                       [x["hi"] - m for m, x in zip(mean, s)]])
      line = ax.errorbar(ns, mean, yerr=bars, marker="o", capsize=3,
                         label=f"{activation} mean")[0]
      # The median shows how far a few nearly singular T pull the mean.
      ax.plot(ns, [x["median"] for x in s], ls=":", marker="x",
              color=line.get_color(), label=f"{activation} median")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.xaxis.set_minor_locator(matplotlib_ticker().NullLocator())
    ax.set_xlabel("embedding dimension n")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=8, title_fontsize=7,
                 title=f"bars: 95% bootstrap interval of the mean\n"
                 f"(linear: < {TINY:.0e}, off the axis)")
  fig.tight_layout()
  save(fig, path)


def write_outputs(out: str, ns: List[int], trials: int = 20, seed: int = 0,
                  num_points: int = 200) -> List[str]:
  """Writes report.md, spirals.png and error_vs_n.png into `out`; their paths."""
  if trials < 2:
    raise ConfigError(f"--trials={trials}: need at least 2 for a spread.")
  if not ns or min(ns) < 1:
    raise ConfigError(f"--ns={ns}: need dimensions >= 1.")
  if num_points < 3:
    raise ConfigError(f"--points={num_points}: need at least 3.")
  os.makedirs(out, exist_ok=True)
  results = experiment(ns, trials, seed, num_points)
  plot_spirals(ns, seed, num_points, os.path.join(out, "spirals.png"))
  plot_errors(results, ns, os.path.join(out, "error_vs_n.png"))
  lines = [
      "# manifold: ReLU on a spiral embedded in n dimensions", "",
      "MobileNetV2 (arXiv 1801.04381), Figure 1: a 2-D spiral x is embedded as "
      "act(x T) with T ~ Normal(0, 1) of shape (2, n) and projected back with "
      "pinv(T). Does ReLU destroy the spiral when n is small and keep it when n "
      "is large?", "",
      f"- Command: `{command(out, ns, trials, seed, num_points)}`",
      f"- Spiral: {num_points} points, r = t for t in [0, 4π], scaled to radius "
      f"{MAX_RADIUS:g} and centred. ReLU6's result depends on this scale (it clips at 6).",
      f"- Trials: {trials} random T per n (seed {seed}); trial k uses the same T for "
      "every activation.",
      "- Error: mean squared reconstruction error / the spiral's mean squared norm. "
      "Cells: mean ± sample std [95% percentile bootstrap interval of the mean, "
      f"{BOOTSTRAP:,} resamples, seeded]. Values below {TINY:.0e} are float "
      "round-off and shown as such (their digits depend on the BLAS).", "",
      "## Relative error", ""] + table(results["error"], ns) + [
      "", "## Relative error after the best affine fit onto the spiral", "",
      "What is lost beyond a rescaling and shift of the whole spiral.", ""] + table(
      results["aligned"], ns) + [
      "", "## Conclusion", ""] + conclusion(results, ns) + [
      "", "![spirals](spirals.png)", "", "![error vs n](error_vs_n.png)", ""]
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return [path, os.path.join(out, "spirals.png"), os.path.join(out, "error_vs_n.png")]


def define_flags():
  """Defined only when the command runs, so importing this module adds no flags."""
  flags.DEFINE_string("out", None, "Where report.md and the two plots go.")
  flags.DEFINE_list("ns", ["2", "3", "5", "15", "30"], "Embedding dimensions n.")
  flags.DEFINE_integer("trials", 20, "Random matrices T per n.")
  flags.DEFINE_integer("seed", 0, "Seed of the T's and of the bootstrap.")
  flags.DEFINE_integer("points", 200, "Points on the spiral.")
  flags.mark_flag_as_required("out")


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {argv[1:]}")
  try:
    ns = [int(n) for n in FLAGS.ns]
  except ValueError:
    raise ConfigError(f"--ns={','.join(FLAGS.ns)}: expected integers, e.g. 2,3,5,15,30.")
  for path in write_outputs(FLAGS.out, ns, FLAGS.trials, FLAGS.seed, FLAGS.points):
    print(path)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
