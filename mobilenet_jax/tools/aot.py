"""Compiles a config's real train and eval steps for TPUs and GPUs this host lacks.

  pip install -e '.[tpu]'   # libtpu: compile-only TPU devices on a CPU host
  python -m mobilenet_jax.tools.aot --config configs/mobilenet_v2.py:1.0_224 \
      --targets v5e-1,v6e-1,v5e-16 --dtypes float32,bfloat16

Per target chip and dtype it prints: whether the step compiles; HBM per chip
(arguments, temporaries, outputs) against the chip's capacity at the config's
per-device batch; the largest per-device batch that fits; flops and HBM bytes
per training image; the compiler's own estimate of the step time and
images/s; and a roofline from the chip's published peak FLOP/s and HBM
bandwidth. Every figure is the compiler's, from the program a real run would
execute (same model, optimizer, data-parallel step, sharding); none is a
measurement on the device (docs/performance.md, "TPUs and GPUs without one").

TPU: libtpu's compile-only topologies (jax.experimental.topologies), with
TPU_SKIP_MDS_QUERY=1 so libtpu does not look for a TPU VM's metadata server.
GPU: jax-cuda12-plugin (`pip install -e '.[gpu-aot]'`) compiles for an XLA GPU
target config (mobilenet_jax/tools/gpu_specs/, from XLA's own); cost analysis is not
available there, so the flops are XLA's count of the unoptimised program and
no step-time estimate is given.
"""

import os

if __name__ == "__main__":  # before JAX starts: the host backend is the CPU
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses
import functools
import importlib.util
import json
import pathlib
import re
import sys
import time
from typing import Dict, List, Optional

from absl import flags, logging
from ml_collections import config_flags

from mobilenet_jax import cli
from mobilenet_jax.errors import ConfigError

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip and how to get compile-only devices for it.

  peak_flops: the published dense bfloat16 FLOP/s per chip. XLA:TPU runs
  float32 convolutions and matmuls at its default precision as one bfloat16
  pass on the MXU, so the same peak bounds float32 there; on an H100,
  float32 runs as TF32 (JAX's default precision), peak_flops_f32.
  """
  name: str
  platform: str            # "tpu" or "cuda"
  topology: str            # jax.experimental.topologies' name
  hbm_bytes: int
  peak_flops: float
  hbm_bytes_per_s: float
  source: str
  single_host: bool = False
  peak_flops_f32: Optional[float] = None
  gpu_spec: Optional[str] = None


# Published figures: cloud.google.com/tpu/docs/v5e, /v6e, /v5p (per chip);
# NVIDIA H100 SXM datasheet (dense, without sparsity).
V5E = dict(hbm_bytes=16 * GIB, peak_flops=197e12, hbm_bytes_per_s=819e9,
           source="Cloud TPU v5e: 197 TFLOP/s bf16, 16 GiB HBM2 at 819 GB/s")
V6E = dict(hbm_bytes=32 * GIB, peak_flops=918e12, hbm_bytes_per_s=1640e9,
           source="Cloud TPU v6e: 918 TFLOP/s bf16, 32 GiB HBM at 1640 GB/s")
V5P = dict(hbm_bytes=95 * GIB, peak_flops=459e12, hbm_bytes_per_s=2765e9,
           source="Cloud TPU v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s")
CHIPS = {c.name: c for c in [
    Chip("v5e-1", "tpu", "v5e:1x1", single_host=True, **V5E),
    Chip("v5e-4", "tpu", "v5e:2x2", **V5E),
    Chip("v5e-16", "tpu", "v5e:4x4", **V5E),   # 4 hosts of 4 chips
    Chip("v6e-1", "tpu", "v6e:1x1", single_host=True, **V6E),
    Chip("v6e-4", "tpu", "v6e:2x2", **V6E),
    Chip("v5p-8", "tpu", "v5p:2x2x1", **V5P),
    Chip("h100", "cuda", "1x1x1", hbm_bytes=80 * 10 ** 9, peak_flops=989e12,
         peak_flops_f32=495e12, hbm_bytes_per_s=3.35e12, gpu_spec="h100_sxm.txtpb",
         source="NVIDIA H100 SXM: 989 TFLOP/s bf16, 495 TFLOP/s TF32 (dense), "
                "80 GB HBM3 at 3.35 TB/s"),
]}
GPU_SPECS = pathlib.Path(__file__).parent / "gpu_specs"


# ---------------------------------------------------------------- devices ---

# Compile-only compiles crash on older JAX: on Colab's jax 0.7.2 with its libtpu
# 0.0.21.1 the TPU compile succeeds, then JAX segfaults asking the compile-only
# client for default layouts (pxla.is_default_layout). 0.10.2 is the oldest tested.
MIN_JAX = (0, 10)


def jax_version() -> tuple:
  import jax
  return tuple(int(p) for p in jax.__version__.split(".")[:2])


def installed(module: str) -> bool:
  """find_spec of a submodule raises, rather than answering None, when its parent is absent."""
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    return False


def check_backend(chip: Chip):
  """One line naming the fix when the compiler for `chip` is not installed."""
  if chip.platform == "tpu" and not installed("libtpu"):
    raise ConfigError(f"compiling for {chip.name} needs libtpu, which is not installed; "
                      "pip install -e '.[tpu]' (jax's tpu extra pins the libtpu that "
                      "matches your jax).")
  if chip.platform == "cuda" and not installed("jax_plugins.xla_cuda12"):
    raise ConfigError(f"compiling for {chip.name} needs jax-cuda12-plugin, which is not "
                      "installed; pip install -e '.[gpu-aot]' (the plugin of your jax's "
                      "version).")
  if jax_version() < MIN_JAX:
    import jax
    raise ConfigError(f"compiling for {chip.name} without the device needs jax >= "
                      f"{'.'.join(map(str, MIN_JAX))} (jax {jax.__version__} crashes after "
                      "compiling); in another environment: pip install -U 'jax[tpu]' && "
                      "pip install -e '.[tpu]'.")


def target_chip(name: str) -> Chip:
  if name not in CHIPS:
    raise ConfigError(f"unknown target {name!r}; choose one of {', '.join(CHIPS)}.")
  return CHIPS[name]


def devices(chip: Chip) -> list:
  """Compile-only devices of `chip`'s whole slice (every host's)."""
  from jax.experimental import topologies
  check_backend(chip)
  if chip.platform == "cuda":
    spec = (GPU_SPECS / chip.gpu_spec).read_text()
    return topologies.get_topology_desc(platform="cuda", topology=chip.topology,
                                        target_config=spec).devices
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no TPU VM metadata server here
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # parallel test workers
  extra = {"chips_per_host_bounds": [1, 1, 1]} if chip.single_host else {}
  return topologies.get_topology_desc(chip.topology, "tpu", **extra).devices


# -------------------------------------------------------------- programs ---

def abstract(tree, sharding):
  import jax
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      tree)


@dataclasses.dataclass
class Programs:
  """A config's train and eval steps for one mesh, as a real run builds them,
  with abstract (shape-only) arguments laid out on that mesh."""
  train: object
  eval: object
  state: object
  variables: object
  mesh: object
  config: object

  def train_args(self, per_device: int):
    return self.state, self.batch(per_device, eval=False)

  def eval_args(self, per_device: int):
    return self.variables, self.batch(per_device, eval=True)

  def batch(self, per_device: int, eval: bool):
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from mobilenet_jax.parallel import DATA
    n, size = per_device * self.mesh.size, self.config.image_size
    split = NamedSharding(self.mesh, P(DATA))
    batch = {"image": jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32, sharding=split),
             "label": jax.ShapeDtypeStruct((n,), jnp.int32, sharding=split)}
    if eval:
      batch["mask"] = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=split)
    return batch


def build_programs(config, device_list, platform: Optional[str] = None) -> Programs:
  """The train and eval steps of `config` on a "data" mesh of `device_list`,
  with kernels for `platform` (default: the devices')."""
  import jax
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  from mobilenet_jax import parallel
  from mobilenet_jax.training import optim, steps

  mesh = Mesh(np.asarray(device_list), (parallel.DATA,))
  model, eval_model = steps.config_models(config, platform or parallel.platform(mesh))
  # The schedule's epoch length changes constants, not the program's shape.
  tx, _ = optim.create_optimizer(config, 1000, 100_000, frozen_bn=model.frozen_bn_paths())
  state = jax.eval_shape(lambda: steps.create_train_state(
      eval_model, config.image_size, tx, jax.random.key(0), ema=config.ema_decay > 0))
  state = abstract(state, NamedSharding(mesh, P()))
  train = parallel.data_parallel(
      functools.partial(steps.train_step, model=model, tx=tx,
                        label_smoothing=config.label_smoothing, ema_decay=config.ema_decay),
      mesh, donate_state=True)
  evaluate = parallel.data_parallel(functools.partial(steps.eval_step, model=eval_model),
                                    mesh)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return Programs(train, evaluate, state, variables, mesh, config)


# -------------------------------------------------------------- analysis ---

class DoesNotFit(Exception):
  """The compiler ran out of the chip's memory."""


def compile_program(fn, args):
  """fn compiled for `args`, or DoesNotFit."""
  import jax
  lowered = fn.lower(*args)
  try:
    return lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
      raise DoesNotFit(str(e).splitlines()[0]) from None
    raise


def hbm(compiled) -> Dict[str, int]:
  """Bytes per chip: arguments, outputs (less those aliasing donated
  arguments), temporaries and code; `total` is what must fit in HBM."""
  m = compiled.memory_analysis()
  out = {"arguments": m.argument_size_in_bytes,
         "outputs": m.output_size_in_bytes - m.alias_size_in_bytes,
         "temporaries": m.temp_size_in_bytes,
         "code": m.generated_code_size_in_bytes}
  out["total"] = sum(out.values())
  return out


def cost_dict(analysis) -> Dict:
  """A cost analysis as one dict ({} for none); JAX < 0.8 gave a list of them."""
  if isinstance(analysis, list):
    analysis = analysis[0] if analysis else None
  return analysis or {}


def cost(compiled) -> Dict[str, Optional[float]]:
  """Flops, HBM bytes and the compiler's step time for one chip's program, or
  None where the backend has no cost model (GPU).

  libtpu's cost model counts each of its internal ConcatBitcast custom calls
  as -1 s in `optimal_seconds`; they are added back (and counted, so the
  correction is visible).
  """
  analysis = cost_dict(compiled.cost_analysis())
  if not analysis:
    return None
  concat_bitcasts = len(re.findall(r'custom_call_target="ConcatBitcast"', compiled.as_text()))
  seconds = analysis.get("optimal_seconds")
  if seconds is not None:
    seconds = seconds + concat_bitcasts
  return {"flops": analysis.get("flops"), "bytes": analysis.get("bytes accessed"),
          "seconds": seconds if seconds and seconds > 0 else None,
          "concat_bitcasts": concat_bitcasts, "cost_model": "compiled program"}


def host_flops(config, platform: str, per_device: int) -> Dict[str, Optional[float]]:
  """The flops of one device's train step, counted by XLA on the unoptimised
  program lowered for this host's CPU with `platform`'s kernels: the same
  arithmetic, where the target's compiler gives no cost analysis."""
  import jax
  programs = build_programs(config, jax.devices("cpu")[:1], platform)
  analysis = cost_dict(programs.train.lower(*programs.train_args(per_device)).cost_analysis())
  return {"flops": analysis.get("flops"), "bytes": None, "seconds": None,
          "cost_model": "unoptimised program (flops only)"}


DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
               "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+) ([\w-]+)\((.*?)\)(.*)$")
SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
# Moves no bytes itself, or (an async op's "-done" half) the bytes its "-start" counted.
NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast",
              "after-all", "partition-id", "replica-id", "copy-done", "slice-done",
              "all-reduce-done", "all-gather-done", "collective-permute-done"}


def shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in SHAPE.findall(text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * DTYPE_BYTES.get(dtype, 4)
  return total


def hbm_traffic(hlo_text: str) -> List[Dict]:
  """Each top-level instruction of the compiled program's entry computation
  with the bytes it reads and writes (its operands and its result: what a
  fusion moves through HBM), its kind and the JAX operation it came from."""
  entry = hlo_text[hlo_text.index("\nENTRY "):]
  entry = entry[:entry.index("\n}")]
  sizes, rows = {}, []
  for line in entry.splitlines()[1:]:
    m = INSTRUCTION.match(line)
    if not m:
      continue
    name, shape, op, operands, rest = m.groups()
    sizes[name] = shape_bytes(shape)
    if op in NO_TRAFFIC:
      continue
    read = sum(sizes.get(o.lstrip("%"), 0) for o in re.findall(r"%[\w.-]+", operands))
    if op.endswith("-start"):  # its result tuple repeats the operand: count the copy once
      sizes[name] -= read
    source = re.search(r'op_name="([^"]*)"', rest)
    kind = re.search(r"kind=(\w+)", rest)
    rows.append({"name": name, "op": op, "kind": kind.group(1) if kind else op,
                 "bytes": read + sizes[name], "source": source.group(1) if source else ""})
  return sorted(rows, key=lambda r: -r["bytes"])


def traffic_by_operation(rows: List[Dict]) -> Dict[str, int]:
  """Bytes grouped by the JAX primitive each instruction came from, forward
  and backward ("transpose") apart: where a step's HBM traffic goes."""
  groups = {}
  for r in rows:
    primitive = r["source"].rsplit("/", 1)[-1] or r["op"]
    key = ("backward " if "transpose(" in r["source"] else "forward ") + primitive
    groups[key] = groups.get(key, 0) + r["bytes"]
  return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def roofline(chip: Chip, dtype: str, flops: float, nbytes: Optional[float]) -> Dict:
  """The step's lower bound from peak FLOP/s and HBM bandwidth, and which binds."""
  peak = chip.peak_flops_f32 if dtype == "float32" and chip.peak_flops_f32 else chip.peak_flops
  compute = flops / peak if flops else 0.0
  memory = nbytes / chip.hbm_bytes_per_s if nbytes else 0.0
  return {"seconds": max(compute, memory), "compute_s": compute, "memory_s": memory,
          "bound": "memory" if memory > compute else "compute"}


def fits(programs: Programs, chip: Chip, batch: int) -> Optional[int]:
  """HBM bytes per chip of the training step at `batch`, None if over capacity."""
  try:
    used = hbm(compile_program(programs.train, programs.train_args(batch)))["total"]
  except DoesNotFit:
    return None
  return used if used <= chip.hbm_bytes else None


def largest_batch(programs: Programs, chip: Chip, per_device: int, used: int) -> int:
  """The largest per-device training batch that fits in HBM (a multiple of 8),
  given that `per_device` fits using `used` bytes.

  Memory is close to affine in the batch: one more compile at half the batch
  gives the slope and so a guess; a compile at the guess confirms it, else a
  bisection between what fits and the guess finds the edge to within 2%. On a
  TPU, memory is uneven in the batch (tiles of 128), so a guess that fits is a
  batch that fits; somewhat larger ones may too.
  """
  half = max(1, per_device // 2)
  slope = max(1.0, (used - hbm(compile_program(programs.train, programs.train_args(half)))
                    ["total"]) / max(1, per_device - half))
  guess = max(per_device, int(per_device + (chip.hbm_bytes - used) / slope) // 8 * 8)
  if fits(programs, chip, guess):
    return guess
  low, high = per_device, guess  # low fits, high does not
  while high - low > max(8, 0.02 * low):
    mid = (low + high) // 2 // 8 * 8 or (low + high) // 2
    if mid <= low:
      break
    low, high = (mid, high) if fits(programs, chip, mid) else (low, mid)
  return low


def smaller_batch_that_fits(programs: Programs, chip: Chip, per_device: int) -> int:
  """The largest batch that fits, searched from below a batch that does not."""
  batch = per_device // 2
  while batch >= 1:
    used = fits(programs, chip, batch)
    if used:
      return largest_batch(programs, chip, batch, used)
    batch //= 2
  return 0


def analyse(config, chip: Chip, dtype: str, device_list, fit: bool = True,
            per_device: Optional[int] = None) -> Dict:
  """Compiles `config`'s train and eval steps for `chip` in `dtype` (at
  `per_device` images per chip, default the config's); the figures."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.dtype = dtype
    config.per_device_batch_size = per_device or config.per_device_batch_size
  per_device = config.per_device_batch_size
  programs = build_programs(config, device_list)
  row = {"target": chip.name, "chips": len(device_list),
         "hosts": len({d.process_index for d in device_list}),
         "device_kind": device_list[0].device_kind, "dtype": dtype,
         "per_device_batch": per_device, "hbm_capacity": chip.hbm_bytes}
  t = time.perf_counter()
  try:
    compiled = compile_program(programs.train, programs.train_args(per_device))
  except DoesNotFit as e:
    return {**row, "compiles": True, "fits": False, "error": str(e),
            "largest_batch": smaller_batch_that_fits(programs, chip, per_device) if fit else None}
  row["compile_s"] = time.perf_counter() - t
  row["hbm"] = hbm(compiled)
  row["fits"] = row["hbm"]["total"] <= chip.hbm_bytes
  row["compiles"] = True
  c = cost(compiled) or host_flops(config, device_list[0].platform, per_device)
  row["cost_model"] = c["cost_model"]
  row["flops_per_image"] = c["flops"] / per_device if c["flops"] else None
  row["bytes_per_image"] = c["bytes"] / per_device if c["bytes"] else None
  row["compiler_step_s"] = c["seconds"]
  row["compiler_img_per_s"] = per_device / c["seconds"] if c["seconds"] else None
  row["concat_bitcasts"] = c.get("concat_bitcasts")
  # Without the bytes (GPU) a roofline would be the flops' alone: far too high
  # for a memory-bound network, so none is given.
  line = roofline(chip, dtype, c["flops"], c["bytes"]) if c["bytes"] else None
  row["roofline_img_per_s"] = per_device / line["seconds"] if line else None
  row["roofline_bound"] = line["bound"] if line else None
  if chip.platform == "tpu":
    row["traffic"] = {k: v / per_device for k, v in
                      traffic_by_operation(hbm_traffic(compiled.as_text())).items()}
  eval_batch = config.eval_per_device_batch_size
  eval_compiled = compile_program(programs.eval, programs.eval_args(eval_batch))
  eval_cost = cost(eval_compiled) or {"seconds": None}
  row["eval_per_device_batch"] = eval_batch
  row["eval_hbm"] = hbm(eval_compiled)["total"]
  row["eval_compiler_img_per_s"] = (eval_batch / eval_cost["seconds"]
                                    if eval_cost["seconds"] else None)
  if fit:
    row["largest_batch"] = (largest_batch(programs, chip, per_device, row["hbm"]["total"])
                            if row["fits"] else smaller_batch_that_fits(programs, chip,
                                                                        per_device))
  return row


# --------------------------------------------------------------- printing ---

def fmt(value, spec: str, missing: str = "-") -> str:
  return missing if value is None else format(value, spec)


HEADER = ("| target | chips | dtype | batch/chip | compiles | HBM GiB (args/temp/out) of cap |"
          " largest batch | GFLOP/img | MB/img | compiler img/s/chip | roofline img/s/chip |")


def table_row(r: Dict) -> str:
  cap = r["hbm_capacity"] / GIB
  if not r.get("hbm"):
    return (f"| {r['target']} | {r['chips']} | {r['dtype']} | {r['per_device_batch']} | "
            f"yes | does not fit in {cap:.0f} | - | - | - | - | - |")
  h = {k: v / GIB for k, v in r["hbm"].items()}
  return (f"| {r['target']} | {r['chips']} | {r['dtype']} | {r['per_device_batch']} | yes | "
          f"{h['total']:.2f} ({h['arguments']:.2f}/{h['temporaries']:.2f}/{h['outputs']:.2f})"
          f" of {cap:.0f} | {r.get('largest_batch', '-')} | "
          f"{fmt(r['flops_per_image'] and r['flops_per_image'] / 1e9, '.2f')} | "
          f"{fmt(r['bytes_per_image'] and r['bytes_per_image'] / 1e6, '.0f')} | "
          f"{fmt(r['compiler_img_per_s'], ',.0f')} | "
          f"{fmt(r['roofline_img_per_s'], ',.0f')}"
          f"{' (' + r['roofline_bound'] + ')' if r['roofline_bound'] else ''} |")


# ---------------------------------------------------------------- command ---

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (defined only when it runs: tests import this module
  beside other commands that also define --config)."""
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_list("targets", ["v5e-1", "v6e-1", "v5e-16"],
                    f"Chips or slices to compile for: {', '.join(CHIPS)}.")
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes.")
  flags.DEFINE_list("per_device_batches", [], "Per-device training batches to compile "
                    "(default: the config's per_device_batch_size).")
  flags.DEFINE_bool("fit", True, "Also find the largest per-device batch that fits "
                    "(a few more compiles per row).")
  flags.DEFINE_integer("traffic", 0, "After the table, the N operations that move the "
                       "most HBM bytes per training image, per TPU row.")
  flags.DEFINE_string("json", None, "Also write every figure to this JSON file.")
  flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  from mobilenet_jax import defaults
  config = FLAGS.config
  defaults.validate(config)
  chips = [target_chip(name) for name in FLAGS.targets]
  for dtype in FLAGS.dtypes:
    if dtype not in ("float32", "bfloat16"):
      raise ConfigError(f"--dtypes: {dtype!r} is not valid; choose float32, bfloat16.")
  for chip in chips:
    check_backend(chip)
  try:
    batches = [int(b) for b in FLAGS.per_device_batches] or [None]
  except ValueError:
    raise ConfigError(f"--per_device_batches={','.join(FLAGS.per_device_batches)}: "
                      "give whole numbers, e.g. 96,128.") from None
  print(HEADER)
  print("|" + "---|" * HEADER.count(" | ") + "---|")
  rows, unfit = [], []
  for chip in chips:
    device_list = devices(chip)
    for dtype in FLAGS.dtypes:
      for batch in batches:
        row = analyse(config, chip, dtype, device_list, FLAGS.fit, batch)
        rows.append(row)
        print(table_row(row), flush=True)
        if not row["fits"]:
          unfit.append(row)
  for r in rows:
    if FLAGS.traffic and r.get("traffic"):
      top = list(r["traffic"].items())[:FLAGS.traffic]
      print(f"HBM traffic, {r['target']} {r['dtype']} at {r['per_device_batch']}/chip "
            f"(MB per training image): " + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in top))
  if FLAGS.json:
    pathlib.Path(FLAGS.json).write_text(json.dumps(rows, indent=2, sort_keys=True))
  print("Figures are the compilers' (memory and cost analyses of the compiled programs), "
        "not measurements on the chips.")
  for r in unfit:
    largest = r.get("largest_batch")
    cli.error_line(f"per_device_batch_size={r['per_device_batch']} does not fit on "
                   f"{r['target']} in {r['dtype']} ({r['hbm_capacity'] / GIB:.0f} GiB of "
                   f"HBM per chip); use --config.per_device_batch_size={largest} or less."
                   if largest else
                   f"per_device_batch_size={r['per_device_batch']} does not fit on "
                   f"{r['target']} in {r['dtype']}; lower --config.per_device_batch_size.")
  if unfit:
    sys.exit(2)


def run():
  """The `mobilenet-aot` console script."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # may be too late if JAX started: -m is sure
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
