"""Statistics over a sweep's seeds, and what they support in words.

Means with 95% Student-t intervals; differences paired by seed (a sweep
trains every variant on the same seeds, so pairing removes the spread two
variants share); top-1 at fractions of the budget (learning speed);
convergence; a gap between two values of one knob across another. Every
claim is what the interval supports, no more. `report` writes them out.
"""

import math
import statistics
from typing import Dict, List, Optional, Tuple

from scipy.stats import t as student_t

FRACTIONS = (10, 25, 50, 100)  # percent of the training steps (learning speed)
CONVERGED_POINTS = 1.0  # a run whose last two evaluations differ by more may still move


def stats(values: List[float]) -> dict:
  """mean, sample standard deviation (0 for one value), n, and the 95%
  Student-t interval of the mean (n - 1 dof; lo and hi are nan below n = 2)."""
  n = len(values)
  mean = statistics.fmean(values) if n else float("nan")
  std = statistics.stdev(values) if n > 1 else 0.0
  half = (float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1
          else float("nan"))
  return {"mean": mean, "std": std, "n": n, "lo": mean - half, "hi": mean + half}


def fmt(s: dict, digits: int) -> str:
  return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def ci(s: dict) -> str:
  return f"[{s['lo']:.2f}, {s['hi']:.2f}]" if s["n"] >= 2 else "n/a"


def final_top1(result: dict) -> float:
  return 100 * result["eval_top1"]


def top1_at(result: dict, percent: int) -> Optional[Tuple[int, float]]:
  """(step, top-1 %) of the run's last evaluation at or before `percent`% of
  its steps; None if it had not been evaluated by then."""
  limit = result["steps"] * percent // 100
  done = [h for h in result["history"] if h["step"] <= limit]
  return (done[-1]["step"], 100 * done[-1]["eval_top1"]) if done else None


def converged(result: dict) -> bool:
  h = result["history"]
  return (len(h) >= 2 and
          abs(h[-1]["eval_top1"] - h[-2]["eval_top1"]) * 100 <= CONVERGED_POINTS + 1e-9)


def early_percent(results: List[dict]) -> Optional[int]:
  """The earliest fraction below 100% at which every run had been evaluated."""
  return next((p for p in FRACTIONS[:-1] if all(top1_at(r, p) for r in results)),
              None)


def paired(a: List[dict], b: List[dict], value) -> Dict[int, float]:
  """{seed: value(a's run) - value(b's run)} on the seeds both have a value
  for: the seed fixes initialization and data order, so pairing removes the
  part of the spread the two variants share."""
  va = {r["_seed"]: value(r) for r in a}
  vb = {r["_seed"]: value(r) for r in b}
  return minus({s: v for s, v in va.items() if v is not None},
               {s: v for s, v in vb.items() if v is not None})


def minus(a: Dict[int, float], b: Dict[int, float]) -> Dict[int, float]:
  """{seed: a[seed] - b[seed]} on the seeds both have, in seed order."""
  return {s: a[s] - b[s] for s in sorted(a) if s in b}


def separated(d: dict) -> bool:
  """Whether the 95% interval of differences excludes 0."""
  return d["n"] >= 2 and (d["lo"] > 0 or d["hi"] < 0)


def verdict(a: str, b: str, d: dict) -> str:
  """What the interval of the differences a - b supports, in words."""
  n = d["n"]
  if n < 2:
    return f"{a} vs {b}: {n} paired seed{'' if n == 1 else 's'}, no interval: no claim."
  if d["lo"] > 0:
    return (f"{a} ends higher than {b} by {d['mean']:.2f} points "
            f"(95% CI [{d['lo']:.2f}, {d['hi']:.2f}], {n} seeds).")
  if d["hi"] < 0:  # the same claim for b - a
    return (f"{b} ends higher than {a} by {-d['mean']:.2f} points "
            f"(95% CI [{-d['hi']:.2f}, {-d['lo']:.2f}], {n} seeds).")
  return f"{a} vs {b}: not separable at {n} seeds (95% CI {ci(d)})."


def speed_verdict(a: str, b: str, early: dict, end: dict, percent: int) -> str:
  """Which of "differs early" and "differs at the end" the intervals support."""
  if min(early["n"], end["n"]) < 2:
    return "fewer than two paired seeds: no claim."
  higher = lambda d: a if d["mean"] > 0 else b
  if separated(early) and separated(end):
    return (f"differs both at {percent}% of the steps ({higher(early)} higher) "
            f"and at the end ({higher(end)} higher).")
  if separated(early):
    return (f"differs early but not at the end: learns at another speed "
            f"({higher(early)} higher at {percent}% of the steps), and the final "
            "top-1 is not separable.")
  if separated(end):
    return (f"differs at the end ({higher(end)} higher) but not at {percent}% "
            "of the steps.")
  return (f"separable neither at {percent}% of the steps nor at the end "
          f"at {end['n']} seeds.")


def dotted(tree: dict, path: str):
  """tree["a"]["b"] for path "a.b"; None where a key is missing."""
  for key in path.split("."):
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def gaps(runs: Dict[str, List[dict]],
         gap: dict) -> Tuple[Dict[object, Dict[int, float]], List[str]]:
  """({x: {seed: top-1 of minus[0] - top-1 of minus[1]}}, problems), with runs
  grouped by the x and split values in their own configs; x descending."""
  top1, owner, clash = {}, {}, set()
  for variant, rs in runs.items():
    for r in rs:
      key = (dotted(r["config"], gap["x"]), dotted(r["config"], gap["split"]))
      if owner.setdefault(key, variant) != variant:  # which one's gap? neither
        clash.add(key)
      top1.setdefault(key, {})[r["_seed"]] = final_top1(r)
  first, second = gap["minus"]
  by_x, problems = {}, []
  for x in sorted({x for x, _ in top1 if x is not None}, reverse=True):
    if {(x, first), (x, second)} & clash:
      problems.append(f"{gap['x']}={x}: more than one variant has the same "
                      f"{gap['split']}; this value is left out")
      continue
    a, b = top1.get((x, first), {}), top1.get((x, second), {})
    by_x[x] = minus(a, b)
  return by_x, problems


def gap_trend(by_x: Dict[object, Dict[int, float]], gap: dict) -> str:
  """Whether the gap grows as x shrinks: the per-seed change of the gap from
  the largest x to the smallest, with its interval (only the ends are tested)."""
  xs = [x for x, diffs in by_x.items() if diffs]
  name = f"{gap['minus'][0]} − {gap['minus'][1]}"
  if len(xs) < 2:
    return f"Fewer than two values of {gap['x']} have a gap: nothing to say about a trend."
  big, small = xs[0], xs[-1]
  change = stats(list(minus(by_x[small], by_x[big]).values()))
  ends = (f"from {gap['x']}={big} to {small} ({name} at {small} minus at {big}, "
          f"per seed: mean {change['mean']:+.2f} points, 95% CI {ci(change)}, "
          f"n = {change['n']})")
  if change["n"] < 2:
    return f"Change of the gap {ends}: fewer than two seeds, no claim."
  if change["lo"] > 0:
    claim = (f"the gap is larger at {gap['x']}={small} than at {big}: the intervals "
             f"support a gap that grows as {gap['x']} shrinks")
  elif change["hi"] < 0:
    claim = (f"the gap is smaller at {gap['x']}={small} than at {big}: it shrinks "
             f"as {gap['x']} shrinks")
  else:
    claim = ("not separable from no change: the intervals do not support a gap "
             f"that grows as {gap['x']} shrinks")
  between = (" Only the two ends are tested; the values between are in the table."
             if len(xs) > 2 else "")
  return f"Change of the gap {ends}: {claim}.{between}"
