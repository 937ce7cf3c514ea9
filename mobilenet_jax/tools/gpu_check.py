"""One GPU: this project's MobileNetV2 training step against timm's, in one command.

On the GPU machine (JAX with CUDA, PyTorch with CUDA and timm; no TensorFlow,
TFDS, ml_collections or clu needed, no network), from the repository root:

  python -m mobilenet_jax.tools.gpu_check --out gpu_check.json

Times, at --batch_size 256 and --image_size 224 by default, with one synthetic
batch resident on the device, --warmup untimed steps and then --steps timed ones:

  jax   this project's data-parallel train step (`steps.train_step` under
        `parallel.data_parallel`, as `mobilenet_jax.tools.benchmark` times it) of
        MobileNetV2 1.0, on ONE device (`jax.local_devices(backend)[:1]`: a
        one-GPU check), in float32 and in bfloat16 compute (`steps.create_model`'s
        dtype; parameters and optimizer state stay float32), timed per step with
        `jax.block_until_ready` on the new state and metrics. compile_s is the
        XLA compile and the first step.
  timm  `timm.create_model("mobilenetv2_100", num_classes=1000)`, eager,
        channels_last, `torch.backends.cudnn.benchmark = True`, in fp32 and with
        AMP: `torch.autocast(dtype=torch.bfloat16)`, no GradScaler (bfloat16 has
        float32's exponent range and needs none), timed per step with
        `torch.cuda.synchronize()`. compile_s is the first step (cuDNN's
        autotuning). Opt-in: `timm_compile`, the same under `torch.compile`.

Both sides: RMSprop (optax.rmsprop(0.01, decay=0.9, momentum=0.9) and
torch.optim.RMSprop(lr=0.01, alpha=0.9, momentum=0.9), eps 1e-8 on both), mean
softmax cross-entropy on integer labels, each framework's default dropout (ours
0.2, timm's 0). "float32" is each framework's default float32: TF32 convolutions
where the GPU has them on both sides, as far as their defaults go; the JSON
records the settings (cudnn.allow_tf32, jax_default_matmul_precision).

Each (system, precision) runs in a process of its own, one after another, so the
frameworks never share the GPU's memory and every peak memory figure is that
run's own. The JSON (--out) has the device name, the versions, the settings and,
per system and precision, the images/s of the median step with the min/max over
the timed steps, the step times, compile and warm-up times and peak memory; and
ours/timm ratios of the median images/s for matching precisions.

Exit status: 0; 2 where a framework is missing or has no such device (one line
says the fix); 1 where a run failed (the JSON is still written, with "errors").
`--device cpu` runs the same plumbing on the CPU (tests/gpu_check_test.py, tiny
settings): its figures say nothing about a GPU.
"""

import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

from mobilenet_jax import timing

SYSTEMS = ("jax", "timm", "timm_compile")
PRECISIONS = ("float32", "bfloat16")
TIMM_MODEL = "mobilenetv2_100"
SETUP_ERROR = 2  # a worker's exit status for "not installed / no such device"

flags.DEFINE_integer("batch_size", 256, "Batch size of every system.", lower_bound=1)
flags.DEFINE_integer("steps", 50, "Timed steps.", lower_bound=1)
flags.DEFINE_integer("warmup", 10, "Untimed steps after the first (compiling) one.",
                     lower_bound=0)
flags.DEFINE_string("out", "gpu_check.json", "Where the JSON is written.")
flags.DEFINE_enum("device", "cuda", ["cuda", "cpu"], "Where both systems run; cpu "
                  "only tests the plumbing.")
flags.DEFINE_integer("image_size", 224, "Input resolution.", lower_bound=32)
flags.DEFINE_list("systems", ["jax", "timm"], "Systems to time, in this order: "
                  + ", ".join(SYSTEMS) + ".")
flags.DEFINE_list("precisions", list(PRECISIONS), "float32 and/or bfloat16 (timm: "
                  "fp32, and bf16 autocast).")
flags.DEFINE_enum("depthwise_impl", "auto", ["auto", "lax", "shift", "native"],
                  "Our depthwise convolution (auto: lax on a GPU).")
flags.DEFINE_integer("worker_timeout_s", 1800, "Limit for each (system, precision) "
                     "run.", lower_bound=1)
flags.DEFINE_string("worker", "", "Internal: run SYSTEM:PRECISION in this process and "
                    "print its JSON line.")
FLAGS = flags.FLAGS


class SetupError(Exception):
  """A framework missing or without the device: one line that says the fix."""


def versions() -> dict:
  """Installed versions, read without importing the frameworks."""
  found = {}
  for name in ("jax", "jaxlib", "flax", "optax", "torch", "torchvision", "timm"):
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  found["python"] = platform.python_version()
  return found


def missing_line(systems) -> str:
  """The fix line where a system is asked for and its packages are missing
  (found without importing them)."""
  def missing(*modules):
    return [m for m in modules if importlib.util.find_spec(m) is None]

  def are(names):
    return f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} not installed"

  names = ",".join(systems)
  lacking = missing("jax", "flax", "optax") if "jax" in systems else []
  if lacking:
    return (f"gpu_check: --systems={names} needs JAX, Flax and Optax, and "
            f"{are(lacking)}. Fix: pip install 'jax[cuda13]' flax optax (or "
            "'jax[cuda12]' for a CUDA 12 driver), or leave jax out: --systems=timm.")
  lacking = (missing("torch", "torchvision", "timm")
             if any(s.startswith("timm") for s in systems) else [])
  if lacking:
    return (f"gpu_check: --systems={names} needs PyTorch and timm, and "
            f"{are(lacking)}. Fix: pip install timm (it brings torch and torchvision; "
            "on a GPU keep or install a CUDA build of torch), or leave timm out: "
            "--systems=jax.")
  return ""


# ------------------------------------------------------------------ timing ---

def time_run(step, result: dict) -> dict:
  """Runs `step` (which blocks until its work is done) once (the compiling
  step), --warmup times untimed, then --steps times timed; adds the figures."""
  t = time.perf_counter()
  step()
  result["first_step_s"] = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(FLAGS.warmup):
    step()
  result["warmup_s"] = time.perf_counter() - t
  times = timing.time_steps(step, 0, FLAGS.steps)
  result.update(timing.summarize(times, FLAGS.batch_size))
  result["img_per_s_min"] = FLAGS.batch_size / max(times)
  result["img_per_s_max"] = FLAGS.batch_size / min(times)
  result["timed_steps"] = len(times)
  result["warmup_steps"] = FLAGS.warmup
  return result


def run_jax(precision: str) -> dict:
  """Our train step of MobileNetV2 1.0 on one device, as benchmark.py builds it."""
  import functools

  import jax
  import numpy as np
  import optax

  from mobilenet_jax import parallel
  from mobilenet_jax.training import steps

  backend = "gpu" if FLAGS.device == "cuda" else "cpu"
  try:
    devices = jax.local_devices(backend=backend)[:1]
  except RuntimeError as e:
    raise SetupError(
        f"gpu_check: JAX {jax.__version__} has no {backend} backend "
        f"({str(e).splitlines()[0]}). Fix: install JAX with CUDA "
        "(pip install -U 'jax[cuda13]', or 'jax[cuda12]' for a CUDA 12 driver), "
        "or run on the CPU: --device cpu.") from None
  if not devices:
    raise SetupError(f"gpu_check: JAX sees no {backend} device. Fix: check the "
                     "driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, or --device cpu.")
  device = devices[0]
  mesh = parallel.create_mesh(devices)
  model_config = {"name": "mobilenet_v2", "alpha": 1.0, "num_classes": 1000}
  model = steps.create_model(model_config, precision, FLAGS.depthwise_impl,
                             platform=device.platform)  # auto: lax off the CPU
  impl = model.depthwise_impl
  tx = optax.rmsprop(0.01, decay=0.9, momentum=0.9)  # benchmark.py's, and the peers'
  t = time.perf_counter()
  with jax.default_device(device):
    state = steps.create_train_state(model, FLAGS.image_size, tx, jax.random.key(0),
                                     ema=False)
  state = parallel.replicate(state, mesh)
  rng = np.random.default_rng(0)
  size = FLAGS.image_size
  batch = parallel.shard_batch(
      {"image": rng.standard_normal((FLAGS.batch_size, size, size, 3), np.float32),
       "label": rng.integers(0, 1000, FLAGS.batch_size).astype(np.int32)}, mesh)
  jax.block_until_ready((state, batch))
  setup_s = time.perf_counter() - t
  step_fn = functools.partial(steps.train_step, model=model, tx=tx,
                              label_smoothing=0.0, ema_decay=0.0)
  t = time.perf_counter()
  step = parallel.data_parallel(step_fn, mesh, donate_state=True)
  step = step.lower(state, batch).compile()
  xla_compile_s = time.perf_counter() - t
  holder = [state, None]

  def train():
    holder[0], holder[1] = step(holder[0], batch)
    jax.block_until_ready(holder)

  result = {"system": "jax", "precision": precision,
            "what": f"mobilenet_jax MobileNetV2 1.0, {precision} compute, float32 "
                    "parameters, steps.train_step under parallel.data_parallel on "
                    "one device",
            "device_name": device.device_kind, "platform": device.platform,
            "num_devices": mesh.size, "depthwise_impl": impl,
            "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
            "optimizer": "optax.rmsprop(0.01, decay=0.9, momentum=0.9)",
            "jax_default_matmul_precision": getattr(
                jax.config, "jax_default_matmul_precision", None),
            "versions": {"jax": jax.__version__,
                         "jaxlib": importlib.metadata.version("jaxlib"),
                         "jax_platform": getattr(device.client, "platform_version",
                                                 None)},
            "setup_s": setup_s, "xla_compile_s": xla_compile_s}
  time_run(train, result)
  result["compile_s"] = xla_compile_s + result["first_step_s"]
  result["final_loss"] = float(holder[1]["loss"])
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  result["peak_mem_mb"] = (stats["peak_bytes_in_use"] / 2**20
                           if stats and "peak_bytes_in_use" in stats else None)
  return result


def run_timm(precision: str, compiled: bool) -> dict:
  """timm's mobilenetv2_100 train step, eager (or torch.compile), channels_last."""
  try:
    import torch
    import timm
  except Exception as e:  # a missing package, or torchvision not matching torch
    raise SetupError(
        f"gpu_check: cannot import PyTorch and timm ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}). Fix: pip install timm with a "
        "torch and torchvision of matching builds, or --systems=jax.") from None
  cuda = FLAGS.device == "cuda"
  if cuda and not torch.cuda.is_available():
    raise SetupError(
        f"gpu_check: torch {torch.__version__} sees no CUDA device (built for CUDA "
        f"{torch.version.cuda}). Fix: install a CUDA build of torch for this driver, "
        "or run on the CPU: --device cpu.")
  torch.backends.cudnn.benchmark = True
  if not cuda:
    # As XLA's CPU code does: RMSprop's first steps make denormals, which the
    # CPU computes a hundred times slower (7 s for a step of 35 ms, seen).
    torch.set_flush_denormal(True)
  device = torch.device(FLAGS.device)
  torch.manual_seed(0)
  t = time.perf_counter()
  model = timm.create_model(TIMM_MODEL, num_classes=1000)
  model = model.to(device).to(memory_format=torch.channels_last).train()
  size = FLAGS.image_size
  x = torch.randn(FLAGS.batch_size, 3, size, size, device=device).contiguous(
      memory_format=torch.channels_last)
  y = torch.randint(0, 1000, (FLAGS.batch_size,), device=device)
  opt = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.9, momentum=0.9,
                            eps=1e-8)
  loss_fn = torch.nn.CrossEntropyLoss()
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  sync()
  setup_s = time.perf_counter() - t
  net = torch.compile(model) if compiled else model
  amp = precision == "bfloat16"
  losses = [None]

  def train():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
      loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    losses[0] = loss
    sync()

  if cuda:
    torch.cuda.reset_peak_memory_stats()
  result = {"system": "timm_compile" if compiled else "timm", "precision": precision,
            "what": f"timm {TIMM_MODEL}, "
                    + ("torch.compile" if compiled else "eager") + ", channels_last, "
                    + ("torch.autocast bfloat16 (no GradScaler)" if amp else "fp32"),
            "device_name": (torch.cuda.get_device_name(device) if cuda
                            else platform.processor() or "cpu"),
            "platform": device.type, "num_devices": 1,
            "params": sum(p.numel() for p in model.parameters()),
            "optimizer": "torch.optim.RMSprop(lr=0.01, alpha=0.9, momentum=0.9, eps=1e-8)",
            "amp": "torch.autocast bfloat16" if amp else None,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "flush_denormal": not cuda,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "versions": {"torch": torch.__version__, "timm": timm.__version__,
                         "torch_cuda": torch.version.cuda,
                         "torch_cudnn": torch.backends.cudnn.version() if cuda else None},
            "setup_s": setup_s}
  time_run(train, result)
  result["compile_s"] = result["first_step_s"]
  result["final_loss"] = float(losses[0])
  result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
  return result


def worker(spec: str) -> int:
  """Runs one SYSTEM:PRECISION and prints its JSON line (stdout's last line)."""
  system, _, precision = spec.partition(":")
  try:
    if system == "jax":
      result = run_jax(precision)
    else:
      result = run_timm(precision, compiled=system == "timm_compile")
  except SetupError as e:
    print(str(e), file=sys.stderr, flush=True)
    return SETUP_ERROR
  print(json.dumps(result), flush=True)
  return 0


# ------------------------------------------------------------ orchestration ---

def worker_args(system: str, precision: str) -> list:
  return [sys.executable, "-m", "mobilenet_jax.tools.gpu_check",
          f"--worker={system}:{precision}", f"--batch_size={FLAGS.batch_size}",
          f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}",
          f"--device={FLAGS.device}", f"--image_size={FLAGS.image_size}",
          f"--depthwise_impl={FLAGS.depthwise_impl}"]


def run_worker(system: str, precision: str) -> tuple:
  """(result or None, exit status, error line, the end of its stderr) of one
  run in its own process."""
  env = dict(os.environ)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
  try:
    proc = subprocess.run(worker_args(system, precision), capture_output=True,
                          text=True, env=env, timeout=FLAGS.worker_timeout_s)
  except subprocess.TimeoutExpired:
    return (None, 1, f"timed out after {FLAGS.worker_timeout_s} s "
            "(--worker_timeout_s)", "")
  lines = proc.stdout.strip().splitlines()
  if proc.returncode == 0 and lines and lines[-1].startswith("{"):
    return json.loads(lines[-1]), 0, "", ""
  error = (proc.stderr.strip().splitlines() or ["failed with no output"])[-1]
  status = SETUP_ERROR if proc.returncode == SETUP_ERROR else 1
  if status != SETUP_ERROR:
    error = f"exit status {proc.returncode}: {error}"
  return None, status, error, proc.stderr[-4000:]


def ratios(results: dict) -> dict:
  """{peer: {precision: ours' median images/s over the peer's}}."""
  ours = results.get("jax", {})
  out = {}
  for system, by_precision in results.items():
    if system == "jax":
      continue
    common = [p for p in PRECISIONS if p in ours and p in by_precision]
    if common:
      out[system] = {p: ours[p]["img_per_s"] / by_precision[p]["img_per_s"]
                     for p in common}
  return out


def report(results: dict) -> dict:
  """The JSON written to --out."""
  installed = versions()
  device_name = None
  for by_precision in results.values():
    for r in by_precision.values():
      installed.update({k: v for k, v in r["versions"].items() if v is not None})
      device_name = device_name or r["device_name"]
  return {"device": FLAGS.device, "device_name": device_name, "versions": installed,
          "model": "MobileNetV2 1.0 (ours) / timm " + TIMM_MODEL,
          "batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size,
          "steps": FLAGS.steps, "warmup": FLAGS.warmup,
          "command": " ".join(["python -m mobilenet_jax.tools.gpu_check"] + sys.argv[1:]),
          "results": results, "ratios_ours_to": ratios(results)}


def print_table(out: dict):
  print(f"{out['model']} @ {out['image_size']}, batch {out['batch_size']}, "
        f"{out['device_name']} ({out['device']})")
  print(f"{'system':<14}{'precision':<10}{'img/s':>10}{'min-max':>19}{'compile s':>11}"
        f"{'ours/this':>11}")
  for system, by_precision in out["results"].items():
    for precision, r in by_precision.items():
      ratio = out["ratios_ours_to"].get(system, {}).get(precision)
      spread = f"{r['img_per_s_min']:.1f}-{r['img_per_s_max']:.1f}"
      print(f"{system:<14}{precision:<10}{r['img_per_s']:>10.1f}{spread:>19}"
            f"{r['compile_s']:>11.1f}" + (f"{ratio:>10.2f}x" if ratio else ""))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.worker:
    sys.exit(worker(FLAGS.worker))
  bad = ([s for s in FLAGS.systems if s not in SYSTEMS]
         + [p for p in FLAGS.precisions if p not in PRECISIONS])
  if bad or not FLAGS.systems or not FLAGS.precisions:
    raise app.UsageError(f"--systems takes {', '.join(SYSTEMS)} and --precisions "
                         f"{', '.join(PRECISIONS)}; got {', '.join(bad) or 'none'}.")
  line = missing_line(FLAGS.systems)
  if line:
    print(line, file=sys.stderr)
    sys.exit(SETUP_ERROR)
  results, errors, logs, status = {}, {}, {}, 0
  for system in dict.fromkeys(FLAGS.systems):
    for precision in dict.fromkeys(FLAGS.precisions):
      result, code, error, log = run_worker(system, precision)
      if result is None:
        errors[f"{system}:{precision}"] = error
        if code != SETUP_ERROR:  # a traceback: its end, for a run read remotely
          logs[f"{system}:{precision}"] = log
        print(f"{system} {precision}: {error}", file=sys.stderr, flush=True)
        status = max(status, code)
        if code == SETUP_ERROR:
          break  # the next precision would fail the same way
        continue
      results.setdefault(system, {})[precision] = result
      print(f"{system} {precision}: {result['img_per_s']:.1f} img/s (median of "
            f"{result['timed_steps']} steps), compile {result['compile_s']:.1f} s",
            flush=True)
  out = report(results)
  if errors:
    out["errors"] = errors
  if logs:
    out["error_logs"] = logs
  with open(FLAGS.out, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2, allow_nan=True)
    f.write("\n")
  if results:
    print_table(out)
  print(f"wrote {FLAGS.out}")
  if status:
    sys.exit(status)


if __name__ == "__main__":
  app.run(main)
