"""Train/inference throughput of this project's MobileNets, and of the peers.

  python -m mobilenet_jax.tools.benchmark --model mobilenet_v2 --image_size 224 \
      --batch_size 32 --mode both --peers keras,torch
  python -m mobilenet_jax.tools.benchmark --mode train --dtype bfloat16 --json

Times the real data-parallel train step (`steps.train_step` under
`parallel.data_parallel`, on every local device) as the trainer calls it
(config.steps_per_call steps a call: 4 on CPU; `--steps_per_call 1` times one
step a call), and the inference forward pass, after compilation and warm-up.
Train figures are per step: a call's time over its steps. Synthetic data by
default (one device-resident batch, as the peers use); `--data pipeline`
feeds the real input pipeline instead (and so imports TensorFlow).
With --peers, Keras Applications and a PyTorch model of the same
architecture run afterwards in the same invocation, one at a time, and the
ratios are printed. With --rounds N, ours and every peer are timed N times,
alternating, and each ratio is the median of the N ratios of adjacent
measurements: on a shared machine whose speed drifts by tens of percent over
minutes, that is steadier than one ratio of two measurements minutes apart.
With --vmap_seeds N, N seeds' train steps also run together in one compiled
program (`jax.vmap` over the stacked states and each seed's own batch) and
are compared with one seed's step: the route for training a sweep's seeds
at once, measured before adopting it. With --json, one JSON object is printed.
"""

if __name__ == "__main__":  # before the imports below allocate anything
  from mobilenet_jax import hugepages
  hugepages.relaunch()

import functools
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

from mobilenet_jax import hugepages, timing
from mobilenet_jax.ops import depthwise

flags.DEFINE_enum("model", "mobilenet_v2", ["mobilenet_v1", "mobilenet_v2"], "Model.")
flags.DEFINE_float("alpha", 1.0, "Width multiplier.")
flags.DEFINE_integer("image_size", 224, "Input resolution.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_enum("mode", "both", ["train", "infer", "both"], "What to time.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype "
                  "(parameters stay float32).")
flags.DEFINE_integer("steps", 10, "Timed steps (train: in calls of --steps_per_call).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_integer("steps_per_call", 0, "Train steps one call runs, as the trainer's "
                     "config.steps_per_call; 0: the trainer's choice for the platform.",
                     lower_bound=0)
flags.DEFINE_enum("data", "synthetic", ["synthetic", "pipeline"], "Synthetic "
                  "batches, or the real input pipeline (needs TensorFlow).")
flags.DEFINE_string("dataset", "sklearn_digits", "TFDS dataset for --data=pipeline.")
flags.DEFINE_enum("depthwise_impl", "auto", depthwise.IMPLS,
                  "Depthwise convolution implementation.")
flags.DEFINE_enum("output_stride", "32", ["8", "16", "32"], "The network's output "
                  "stride (16, 8: dilated backbone).")
flags.DEFINE_multi_string("variant", [], "Also time our network changed by KEY=VALUE "
                          "pairs (output_stride, depthwise_impl), e.g. "
                          "--variant=output_stride=16 --variant=output_stride=16,"
                          "depthwise_impl=lax, in the same rounds; reported per "
                          "multiply-add against the base.")
flags.DEFINE_list("peers", [], "Also measure: keras, torch.")
flags.DEFINE_enum("peer_hugepages", "off", ["off", "on", "both"],
                  "Run the peers without (as they run out of the box) or with the "
                  "huge-page malloc tunable this project's entry points set "
                  "(mobilenet_jax/hugepages.py), or both ways.")
flags.DEFINE_integer("vmap_seeds", 1, "Also time this many seeds' train steps vmapped "
                     "in one program, against one seed's step (--mode train/both).",
                     lower_bound=1)
flags.DEFINE_integer("rounds", 1, "Time ours and each peer this many times, "
                     "alternating; ratios are the median over rounds.", lower_bound=1)
flags.DEFINE_bool("json", False, "Print one JSON object.")
PEER_THP = {"off": (False,), "on": (True,), "both": (False, True)}
FLAGS = flags.FLAGS


def pipeline_batches(local_batch: int):
  """Batches of the real input pipeline at the benchmark's size."""
  from mobilenet_jax import defaults
  from mobilenet_jax.data import datasets, input_pipeline
  config = defaults.get_config()
  config.dataset, config.image_size = FLAGS.dataset, FLAGS.image_size
  builder = datasets.get_builder(config)
  return input_pipeline.train_batches(config, builder, [0], 1, local_batch)


def peak_memory_mb(device) -> tuple:
  """(peak MB, what was measured): the device allocator's peak where it has
  one (GPU, TPU), else the process's peak resident memory (CPU)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20, "device peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def timed(fn, steps_per_call: int = 1) -> list:
  """Per-step durations of `fn` (which runs `steps_per_call` steps and blocks
  on its result) over `--steps` steps after `--warmup` untimed ones: the
  peers' method, for whole calls."""
  calls = lambda n: -(-n // steps_per_call)  # whole calls covering n steps
  times = timing.time_steps(fn, calls(FLAGS.warmup), calls(FLAGS.steps))
  return [t / steps_per_call for t in times]


def time_round(timers: dict, result: dict) -> dict:
  """{mode: per-step durations} of one round of `timers` (prepare_jax's)."""
  return {mode: timed(fn, result["train"]["steps_per_call"] if mode == "train" else 1)
          for mode, fn in timers.items()}


VARIANT_KEYS = {"output_stride": int, "depthwise_impl": str}


def parse_variant(spec: str) -> dict:
  """"output_stride=16,depthwise_impl=lax" -> the base's settings with those."""
  settings = {"output_stride": int(FLAGS.output_stride),
              "depthwise_impl": FLAGS.depthwise_impl}
  for item in spec.split(","):
    key, _, value = item.partition("=")
    if key not in VARIANT_KEYS or not value:
      raise app.UsageError(f"--variant {spec!r}: use KEY=VALUE pairs with keys "
                           f"{', '.join(VARIANT_KEYS)}, e.g. output_stride=16.")
    settings[key] = VARIANT_KEYS[key](value)
  return settings


def prepare_jax(output_stride: int, depthwise_impl: str) -> tuple:
  """(result, timers): the run's description and compile times, and for each
  timed mode a function that runs one step and waits for it."""
  import jax
  import numpy as np
  import optax

  from mobilenet_jax import madds, parallel
  from mobilenet_jax.training import steps

  model_config = {"name": FLAGS.model, "alpha": FLAGS.alpha, "num_classes": 1000,
                  "output_stride": output_stride}
  mesh = parallel.create_mesh(jax.local_devices())
  model = steps.create_model(model_config, FLAGS.dtype, depthwise_impl)
  tx = optax.rmsprop(0.01, decay=0.9, momentum=0.9)  # the peers' optimizer
  state = parallel.replicate(steps.create_train_state(
      model, FLAGS.image_size, tx, jax.random.key(0), ema=False), mesh)
  rng = np.random.default_rng(0)
  size = FLAGS.image_size
  batch = {"image": rng.standard_normal((FLAGS.batch_size, size, size, 3), np.float32),
           "label": rng.integers(0, 1000, FLAGS.batch_size)}
  device_batch = parallel.shard_batch(batch, mesh)
  device = jax.local_devices()[0]
  result = {"model": FLAGS.model, "alpha": FLAGS.alpha, "image_size": size,
            "batch_size": FLAGS.batch_size, "dtype": FLAGS.dtype, "data": FLAGS.data,
            "backend": jax.default_backend(), "device_kind": device.device_kind,
            "num_devices": mesh.size, "jax": jax.__version__,
            "hugepages": hugepages.active(), "rounds": FLAGS.rounds,
            "cpu": timing.host_cpu(),
            "output_stride": output_stride, "depthwise_impl": depthwise_impl,
            "madds": madds.count(model_config, size)["madds"]}
  timers, holder = {}, [state]  # the latest state: training donates the previous one

  if FLAGS.mode in ("train", "both"):
    step_fn = functools.partial(steps.train_step, model=model, tx=tx,
                                label_smoothing=0.0, ema_decay=0.0)
    per_call = parallel.steps_per_call(FLAGS.steps_per_call, mesh)
    step = parallel.data_parallel(step_fn, mesh, donate_state=True, steps=per_call)
    if FLAGS.data == "pipeline":
      batches = pipeline_batches(FLAGS.batch_size)
      next_batch = lambda: parallel.next_batches(batches, per_call, mesh)
    else:  # the one batch, as many times as a call has steps
      call_batch = parallel.next_batches(itertools.repeat(batch), per_call, mesh)
      next_batch = lambda: call_batch
    t = time.perf_counter()
    step = step.lower(state, next_batch()).compile()
    result["train"] = {"compile_s": time.perf_counter() - t, "steps_per_call": per_call}

    def train():
      holder[0], metrics = step(holder[0], next_batch())
      metrics["loss"].block_until_ready()

    timers["train"] = train
    if FLAGS.vmap_seeds > 1:
      timers["seeds"], result["seeds"] = seeds_timer(model, tx, step_fn, mesh)

  if FLAGS.mode in ("infer", "both"):
    variables = lambda: {"params": holder[0].params, "batch_stats": holder[0].batch_stats}
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
    images = device_batch["image"]
    t = time.perf_counter()
    infer = infer.lower(variables(), images).compile()
    result["infer"] = {"compile_s": time.perf_counter() - t}
    timers["infer"] = lambda: infer(variables(), images).block_until_ready()
  return result, timers


def seeds_timer(model, tx, step_fn, mesh) -> tuple:
  """(timer, result entry) for `--vmap_seeds` seeds trained in one program: the
  states stacked on a leading axis, each seed with its own batch (split over
  devices like any batch), `step_fn` vmapped over both."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P

  from mobilenet_jax import parallel
  from mobilenet_jax.training import steps

  n, size = FLAGS.vmap_seeds, FLAGS.image_size
  states = [steps.create_train_state(model, size, tx, jax.random.key(seed), ema=False)
            for seed in range(n)]
  state = parallel.replicate(jax.tree.map(lambda *xs: jnp.stack(xs), *states), mesh)
  rng = np.random.default_rng(1)
  batch = {"image": rng.standard_normal((n, FLAGS.batch_size, size, size, 3), np.float32),
           "label": rng.integers(0, 1000, (n, FLAGS.batch_size))}
  batch = jax.device_put(batch, NamedSharding(mesh, P(None, parallel.DATA)))
  sharded = jax.shard_map(jax.vmap(step_fn), mesh=mesh,
                          in_specs=(P(), P(None, parallel.DATA)), out_specs=P())
  t = time.perf_counter()
  step = jax.jit(sharded, donate_argnums=(0,)).lower(state, batch).compile()
  entry, holder = {"compile_s": time.perf_counter() - t, "seeds": n}, [state]

  def train_seeds():
    holder[0], metrics = step(holder[0], batch)
    metrics["loss"].block_until_ready()

  return train_seeds, entry


def images_per_step(mode: str) -> int:
  """Images one timed call of `mode` processes: every seed's batch for "seeds"."""
  return FLAGS.batch_size * (FLAGS.vmap_seeds if mode == "seeds" else 1)


def finish_jax(result: dict, rounds: list) -> dict:
  """Adds ours' figures over the steps of all rounds (each round: {mode: step
  durations}), the headline figures and peak memory."""
  import jax
  for mode in rounds[0]:
    steps_s = [t for r in rounds for t in r[mode]]
    per_call = result[mode].get("steps_per_call", 1)  # each duration: a call's, per step
    result[mode].update(timing.summarize(steps_s, images_per_step(mode)),
                        timed_steps=len(steps_s) * per_call)
    # What a user sees from run to run: each round's own median, slowest and fastest.
    per_round = [images_per_step(mode) / statistics.median(r[mode]) for r in rounds]
    result[mode]["round_img_per_s"] = [min(per_round), max(per_round)]
  if "seeds" in result:  # speedup > 1: training the seeds together is faster
    per_round = [statistics.median(r["train"]) * FLAGS.vmap_seeds / statistics.median(r["seeds"])
                 for r in rounds]
    result["seeds"].update(speedup=statistics.median(per_round),
                           speedup_range=[min(per_round), max(per_round)])
  # The headline figures: training's if timed, else inference's.
  main_mode = result.get("train") or result["infer"]
  result.update({k: main_mode[k] for k in ("img_per_s", "step_ms_median", "compile_s")})
  result["peak_mem_mb"], result["peak_mem_of"] = peak_memory_mb(jax.local_devices()[0])
  for mode in ("train", "infer", "seeds"):  # per multiply-add, to compare networks
    if mode in rounds[0]:
      result[mode]["gmadds_per_s"] = result[mode]["img_per_s"] * result["madds"] / 1e9
  return result


def per_madd_ratios(variant: dict, base: dict) -> dict:
  """The variant's multiply-adds per second over the base's, per mode."""
  return {mode: variant[mode]["gmadds_per_s"] / base[mode]["gmadds_per_s"]
          for mode in ("train", "infer") if mode in variant}


def measure_peer(name: str, thp: bool) -> dict:
  """Runs one peer in its own process (its framework stays out of ours), with or
  without the huge-page malloc tunable this project's entry points set."""
  args = [sys.executable, "-m", f"mobilenet_jax.peers.{name}_peer",
          "--model", FLAGS.model, "--alpha", str(FLAGS.alpha),
          "--image_size", str(FLAGS.image_size), "--batch_size", str(FLAGS.batch_size),
          "--steps", str(FLAGS.steps), "--warmup", str(FLAGS.warmup), "--mode", FLAGS.mode]
  if name == "torch" and FLAGS.dtype == "bfloat16":
    args.append("--amp")
  proc = subprocess.run(args, capture_output=True, text=True,
                        env=hugepages.environment(on=thp))
  label = name + ("+thp" if thp else "")
  if proc.returncode != 0:
    return {"peer": label, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
  return dict(json.loads(proc.stdout.strip().splitlines()[-1]), peer=label, hugepages=thp)


def ratios(ours: dict, peer: dict) -> dict:
  return {mode: ours[mode]["img_per_s"] / peer[mode]["img_per_s"]
          for mode in ("train", "infer") if mode in ours and mode in peer}


def combine_peer(runs: list, ours_per_round: list) -> dict:
  """One peer's entry from its runs, one per round, and ours from the same
  rounds. Its figures and ratios are medians over the rounds that ran; each
  round's ratio compares the peer with ours timed just before it."""
  ok = [(run, ours) for run, ours in zip(runs, ours_per_round) if "error" not in run]
  if not ok:
    return runs[-1]
  entry = dict(ok[0][0])
  per_round = [ratios(ours, run) for run, ours in ok]
  entry["ratio_ours_to_peer"], entry["ratio_range"] = {}, {}
  for mode in per_round[0]:
    values = [r[mode] for r in per_round]
    entry[mode] = {k: statistics.median(run[mode][k] for run, _ in ok)
                   for k in ok[0][0][mode]}
    entry["ratio_ours_to_peer"][mode] = statistics.median(values)
    entry["ratio_range"][mode] = [min(values), max(values)]
    rounds = [run[mode]["img_per_s"] for run, _ in ok]
    entry[mode]["round_img_per_s"] = [min(rounds), max(rounds)]
  entry["rounds"] = len(ok)
  if len(ok) < len(runs):
    entry["failed_rounds"] = [run["error"] for run in runs if "error" in run]
  return entry


def print_table(result: dict):
  print(f"{result['model']} alpha {result['alpha']} @ {result['image_size']}, batch "
        f"{result['batch_size']}, {result['dtype']}, {result['data']} data, "
        f"{result['backend']} ({result['device_kind']}) x {result['num_devices']}, "
        f"jax {result['jax']}, huge pages {'on' if result['hugepages'] else 'off'}"
        + (f", train {result['train']['steps_per_call']} steps a call"
           if "train" in result else "")
        + (f", {result['rounds']} rounds (ratios: median over rounds)"
           if result["rounds"] > 1 else ""))
  cpu = result.get("cpu") or {}
  if cpu.get("model"):
    ident = f"{cpu['id']}; " if cpu.get("id") else ""
    print(f"CPU {cpu['model']} ({ident}{', '.join(cpu['flags']) or 'no AVX2'})")
  rows = [("mobilenet_jax", result)] + [(p["peer"], p) for p in result.get("peers", [])]
  variants = result.get("variants", [])
  print(f"{'system':<16}{'mode':<7}{'img/s':>9}{'median ms':>11}{'min ms':>9}"
        f"{'max ms':>9}{'compile s':>11}{'ours/this':>11}"
        + ("  per-round range" if result["rounds"] > 1 else ""))
  for name, r in rows:
    if "error" in r:
      print(f"{name:<16}failed: {r['error']}")
      continue
    for mode in ("train", "infer"):
      if mode not in r:
        continue
      m = r[mode]
      ratio = r.get("ratio_ours_to_peer", {}).get(mode, 1.0)
      spread = "-".join(f"{v:.2f}" for v in r.get("ratio_range", {}).get(mode, []))
      if result["rounds"] > 1 and "round_img_per_s" in m:
        spread += " (rounds {:.1f}-{:.1f} img/s)".format(*m["round_img_per_s"])
      compile_s = f"{m['compile_s']:.1f}" if "compile_s" in m else "-"
      print(f"{name:<16}{mode:<7}{m['img_per_s']:>9.1f}{m['step_ms_median']:>11.1f}"
            f"{m['step_ms_min']:>9.1f}{m['step_ms_max']:>9.1f}{compile_s:>11}"
            f"{ratio:>10.2f}x  {spread}")
  if variants:
    print(f"{'ours as':<40}{'mode':<7}{'img/s':>9}{'GMAdds/s':>10}{'per MAdd vs base':>18}")
    for v in [result] + variants:
      label = f"output_stride {v['output_stride']}, depthwise {v['depthwise_impl']}"
      for mode in ("train", "infer"):
        if mode in v:
          ratio = v.get("per_madd_vs_base", {}).get(mode, 1.0)
          print(f"{label:<40}{mode:<7}{v[mode]['img_per_s']:>9.1f}"
                f"{v[mode]['gmadds_per_s']:>10.2f}{ratio:>17.2f}x")
  if "seeds" in result:
    s = result["seeds"]
    print(f"{s['seeds']} seeds in one vmapped program: {s['img_per_s']:.1f} img/s over all "
          f"seeds, {s['step_ms_median']:.1f} ms per step of all seeds, compile "
          f"{s['compile_s']:.1f} s; {s['speedup']:.2f}x the throughput of one seed's "
          f"steps one after another (per round {s['speedup_range'][0]:.2f}-"
          f"{s['speedup_range'][1]:.2f})")
  print(f"peak memory {result['peak_mem_mb']:.0f} MB ({result['peak_mem_of']})")


def main(argv):
  del argv
  if FLAGS.vmap_seeds > 1 and FLAGS.mode == "infer":
    raise app.UsageError("--vmap_seeds times training: use it with --mode train or both.")
  result, timers = prepare_jax(int(FLAGS.output_stride), FLAGS.depthwise_impl)
  variants = [prepare_jax(**parse_variant(spec)) for spec in FLAGS.variant]
  labels = [(name, thp) for name in FLAGS.peers for thp in PEER_THP[FLAGS.peer_hugepages]]
  ours_rounds, peer_runs = [], {label: [] for label in labels}
  variant_rounds = [[] for _ in variants]
  for _ in range(FLAGS.rounds):
    ours_rounds.append(time_round(timers, result))
    for (variant, variant_timers), rounds in zip(variants, variant_rounds):
      rounds.append(time_round(variant_timers, variant))
    for label in labels:
      peer_runs[label].append(measure_peer(*label))
  result = finish_jax(result, ours_rounds)
  if variants:
    result["variants"] = [finish_jax(v, rounds) for (v, _), rounds in
                          zip(variants, variant_rounds)]
    for v in result["variants"]:
      v["per_madd_vs_base"] = per_madd_ratios(v, result)
  if labels:
    ours_per_round = [{mode: timing.summarize(steps_s, images_per_step(mode))
                       for mode, steps_s in r.items()} for r in ours_rounds]
    result["peers"] = [combine_peer(peer_runs[label], ours_per_round) for label in labels]
  if FLAGS.json:
    print(json.dumps(result))
  else:
    print_table(result)


def run():
  """The `mobilenet-benchmark` console script (huge pages: a relaunch, as with -m)."""
  hugepages.relaunch()
  app.run(main)


if __name__ == "__main__":
  app.run(main)
