"""Runs a sweep of the papers' knobs over seeds, then writes its report.

  python -m mobilenet_jax.tools.ablate --sweep experiments/bottleneck_activation/sweep.py \
      --workdir runs/bottleneck_activation [--set num_epochs=5] [--seeds 0,1,2] \
      [--out experiments/bottleneck_activation]

A sweep file defines `get_sweep()` returning a dict:
  name, question: what it asks (the report's title and first line);
  base: a training config (usually configs/default.py's);
  variants: {variant name: {dotted config key: value}}, in report order;
  seeds: list of seeds; plot: "madds" (top-1 vs multiply-adds), "curves"
  (eval top-1 over training), "gap" (a paired difference against a knob) or
  "precision" (top-1 as float and as int8, with a precision key);
  notes (optional): caveats the report repeats;
  compare_to (optional): the variant every other is compared with, paired by
  seed (default: the best mean);
  gap (with plot="gap"): dict(x=dotted key, split=dotted key, minus=[a, b],
  xlabel=...): the paired a - b difference of `split`, plotted against `x`;
  precision (optional): dict(qat={float variant: its QAT variant},
  fine_tune={float variant: the same fine-tune in float}) for the report's
  section on int8 (float variants set `ptq_eval`).
A variant's `init_from` may be "variant:<name>": each seed starts from the
run of that seed of variant <name>, listed earlier (fine-tuning, e.g. QAT
from the float run).
Every (variant, seed) is one run in WORKDIR/<variant>/seed_<seed>, trained
one after another on the local devices. A run with a results.json is done
and skipped; an interrupted one resumes from its checkpoints. So after a
crash the same command finishes the sweep without redoing finished runs;
a second ablate on a WORKDIR in use stops with one line naming the holder.
The runs share JAX's persistent compilation cache in WORKDIR/compilation_cache
(unless JAX_COMPILATION_CACHE_DIR names another): every seed of a variant,
and a resumed run, compiles the same programs, so only the first compiles.
"""

if __name__ == "__main__":  # before the imports below allocate anything
  from mobilenet_jax import hugepages
  hugepages.relaunch()

import ast
import copy
import logging as py_logging
import os
import runpy
import sys
import time
from typing import Dict, List, NamedTuple

from absl import flags, logging

from mobilenet_jax import cli, defaults, records
from mobilenet_jax.training import workdir as workdir_lib
from mobilenet_jax.tools import report
from mobilenet_jax.errors import ConfigError

flags.DEFINE_string("sweep", None, "Sweep definition file (get_sweep()).")
flags.DEFINE_string("workdir", None, "Directory of the sweep's runs.")
flags.DEFINE_multi_string("set", [], "key=value applied to every run's config, "
                          "e.g. num_epochs=5 or dataset=cifar10.")
flags.DEFINE_list("seeds", None, "Seeds to run instead of the sweep's.")
flags.DEFINE_string("out", None, "Where report.md and the plots go (default: "
                    "--workdir).")
flags.mark_flags_as_required(["sweep", "workdir"])
FLAGS = flags.FLAGS


class Run(NamedTuple):
  variant: str
  seed: int
  config: object  # ml_collections.ConfigDict

  @property
  def name(self) -> str:
    return f"{self.variant}/seed_{self.seed}"


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string, e.g. dataset=cifar10


def apply_overrides(config, overrides: Dict[str, object], where: str):
  """Sets dotted keys of `config`; an unknown key is a ConfigError naming it.
  (config.model holds every knob of its model, model.blocks included.)"""
  for key, value in overrides.items():
    unknown = cli.unknown_key(config, key)
    if unknown:
      raise ConfigError(f"{where}: {unknown}")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = copy.deepcopy(value)  # a section (model) must not be shared between runs
  return config


def load_sweep(path: str) -> dict:
  try:
    sweep = runpy.run_path(path)["get_sweep"]()
  except (OSError, KeyError) as e:
    raise ConfigError(f"cannot load sweep {path!r} ({e}); it must define get_sweep().")
  missing = {"name", "question", "base", "variants", "seeds"} - set(sweep)
  if missing:
    raise ConfigError(f"sweep {path!r} lacks {', '.join(sorted(missing))}.")
  return sweep


def check(config, where: str):
  """defaults.validate, its message prefixed with the run it is about."""
  try:
    defaults.validate(config)
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}") from None


def expand(sweep: dict, overrides: Dict[str, object] = None,
           seeds: List[int] = None) -> List[Run]:
  """One Run per (variant, seed): the base config, the command line's
  overrides, then the variant's own, with the seed set. The more specific key
  wins: a variant's `num_epochs` beats `--set num_epochs`, but `--set
  model.num_classes` survives a variant that replaces the whole `model`
  section (the sweeps across networks), instead of being silently dropped.
  Every run's config is validated here, so a bad one stops the sweep before
  the first run starts."""
  runs = []
  overrides = overrides or {}
  for variant, changes in sweep["variants"].items():
    inner = {key: value for key, value in overrides.items()
             if any(key.startswith(parent + ".") for parent in changes)}
    for seed in seeds if seeds is not None else sweep["seeds"]:
      config = copy.deepcopy(sweep["base"])
      apply_overrides(config, overrides, "--set")
      apply_overrides(config, changes, f"variant {variant!r}")
      apply_overrides(config, inner, "--set")
      config.seed = int(seed)
      check(config, f"variant {variant!r}")
      runs.append(Run(variant, int(seed), config))
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise ConfigError(f"sweep {sweep['name']!r} repeats a variant or seed.")
  return runs


FROM_VARIANT = "variant:"


def resolve_starts(runs: List[Run], workdir: str) -> List[Run]:
  """Runs whose init_from is "variant:<name>" start from that variant's run
  of their seed, which must come before them."""
  before = set()
  for run in runs:
    start = run.config.init_from
    if start and start.startswith(FROM_VARIANT):
      source = Run(start[len(FROM_VARIANT):], run.seed, None)
      if source.name not in before:
        raise ConfigError(f"variant {run.variant!r}: init_from={start!r} names no "
                          f"variant listed before it with seed {run.seed}; list "
                          "that variant first.")
      run.config.init_from = run_dir(workdir, source)
    before.add(run.name)
  return runs


def is_done(run_dir: str) -> bool:
  return records.has_results(run_dir)


GAP_EXAMPLE = ("gap=dict(x='model.alpha', split='model.bottleneck_activation', "
               "minus=['linear', 'relu6'], xlabel='width multiplier alpha')")


def check_report_keys(sweep: dict, runs: List[Run]):
  """The report's optional sweep keys, checked before the first run trains:
  compare_to (the variant the others are compared with) must be a variant;
  gap (and plot="gap") needs x and split, dotted config keys, and minus, two
  values of split that the runs use."""
  where = f"sweep {sweep['name']!r}"
  ref = sweep.get("compare_to")
  if ref is not None and ref not in sweep["variants"]:
    raise ConfigError(f"{where}: compare_to={ref!r} is not a variant; choose one of "
                      f"{', '.join(repr(v) for v in sweep['variants'])}.")
  for pairs in sweep.get("precision", {}).values():  # qat, fine_tune: {float: derived}
    for v in (v for pair in pairs.items() for v in pair):
      if v not in sweep["variants"]:
        raise ConfigError(f"{where}: precision names {v!r}, which is not a variant.")
  gap = sweep.get("gap")
  if gap is None:
    if sweep.get("plot") == "gap":
      raise ConfigError(f"{where}: plot='gap' needs a gap key, e.g. {GAP_EXAMPLE}.")
    return
  if not isinstance(gap, dict) or {"x", "split", "minus"} - set(gap):
    raise ConfigError(f"{where}: gap needs the keys x, split and minus, e.g. {GAP_EXAMPLE}.")
  for key in (gap["x"], gap["split"]):
    unknown = cli.unknown_key(sweep["base"], key)
    if unknown:
      raise ConfigError(f"{where}: gap: {unknown}")
  used = []  # the split values of the runs, in order
  for run in runs:
    value = run.config
    for key in gap["split"].split("."):
      value = value[key]
    used += [value] if value not in used else []
  minus = gap["minus"]
  if not isinstance(minus, (list, tuple)) or len(minus) != 2 or any(m not in used for m in minus):
    raise ConfigError(f"{where}: gap minus={minus!r} must be two values of "
                      f"{gap['split']} that the variants use: {', '.join(map(repr, used))}.")


def write_sweep_record(workdir: str, sweep: dict, runs: List[Run]):
  """What the report needs beyond the runs: question, order, plot, command,
  and the optional compare_to and gap (checked here, before any run)."""
  check_report_keys(sweep, runs)
  record = {"name": sweep["name"], "question": sweep["question"],
            "plot": sweep.get("plot", "curves"), "notes": sweep.get("notes", []),
            "variants": list(sweep["variants"]),
            "seeds": sorted({r.seed for r in runs}),
            "command": "python -m mobilenet_jax.tools.ablate " + " ".join(sys.argv[1:]),
            "commit": cli.git_commit()}
  record.update({k: sweep[k] for k in ("compare_to", "gap", "precision") if k in sweep})
  records.write_sweep(workdir, record)


def run_dir(workdir: str, run: Run) -> str:
  return os.path.join(workdir, run.variant, f"seed_{run.seed}")


def use_compilation_cache(workdir: str):
  """Points JAX's persistent compilation cache at the sweep's workdir unless
  the user chose one. A cached program is the one XLA would compile again,
  so results are unchanged (docs/performance.md has the time it saves)."""
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    import jax
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(workdir, "compilation_cache"))


def run_all(runs: List[Run], workdir: str):
  from mobilenet_jax.training import loop
  durations = []
  left = sum(not is_done(run_dir(workdir, r)) for r in runs)
  for i, run in enumerate(runs, 1):
    directory = run_dir(workdir, run)
    if is_done(directory):
      print(f"ablate: run {i}/{len(runs)} {run.name}: done before, skipped", flush=True)
      continue
    eta = (f", ETA {time.strftime('%H:%M:%S', time.gmtime(left * sum(durations) / len(durations)))}"
           if durations else "")
    print(f"ablate: run {i}/{len(runs)} {run.name}{eta}", flush=True)
    t = time.time()
    loop.train_and_evaluate(run.config, directory)
    durations.append(time.time() - t)
    left -= 1


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {argv[1:]}")
  sweep = load_sweep(FLAGS.sweep)
  overrides = {}
  for item in FLAGS.set:
    key, sep, value = item.partition("=")
    if not sep:
      raise ConfigError(f"--set {item!r} is not key=value, e.g. --set num_epochs=5.")
    overrides[key] = parse_value(value)
  seeds = [int(s) for s in FLAGS.seeds] if FLAGS.seeds else None
  runs = resolve_starts(expand(sweep, overrides, seeds), FLAGS.workdir)
  check_report_keys(sweep, runs)  # before the lock below creates the directory
  # One sweep per directory at a time (each run also locks its own).
  sweep_lock = workdir_lib.claim(FLAGS.workdir)  # noqa: F841  (held to the end)
  write_sweep_record(FLAGS.workdir, sweep, runs)
  # The progress lines are the console output; each run's train.log keeps
  # the full log.
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().setLevel(py_logging.WARNING)
  use_compilation_cache(FLAGS.workdir)
  run_all(runs, FLAGS.workdir)
  out = FLAGS.out or FLAGS.workdir
  path = report.write_report(FLAGS.workdir, out)
  print(f"ablate: {len(runs)} runs done; report in {path}")


def run():
  """The `mobilenet-ablate` console script (huge pages: a relaunch, as with -m)."""
  from mobilenet_jax import hugepages
  hugepages.relaunch()
  cli.run(main)


if __name__ == "__main__":
  cli.run(main)
