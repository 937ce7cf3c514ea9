"""Timing a step the same way everywhere: the benchmark, its peers, the GPU
check and the TFLite export's latency."""

import statistics
import time

# /proc/cpuinfo's numbers that tell CPU generations apart -> how they are printed
CPU_NUMBERS = (("cpu family", "family"), ("model", "model"), ("stepping", "stepping"))
# The instruction sets that decide a CPU's speed here: oneDNN (Keras, PyTorch)
# uses AVX-512 and AMX where present, which XLA's CPU backend mostly does not.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def host_cpu() -> dict:
  """The CPU's model name, its family/model/stepping (cloud VMs call several
  generations "Intel(R) Xeon(R) Processor"; model 143 is Sapphire Rapids, 207
  Emerald Rapids), and which of CPU_FLAGS it has (Linux; empty elsewhere)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      text = f.read()
  except OSError:
    return {"model": "", "id": "", "flags": []}
  fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  have = set(fields.get("flags", "").split())
  numbers = [f"{label} {fields[key]}" for key, label in CPU_NUMBERS if key in fields]
  return {"model": fields.get("model name", ""), "id": ", ".join(numbers),
          "flags": [f for f in CPU_FLAGS if f in have]}


def time_steps(step, warmup: int, steps: int):
  """Runs `step` (which must block until its result is ready) warmup + steps
  times; returns the timed steps' durations in seconds."""
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return times


def summarize(times, batch: int) -> dict:
  median = statistics.median(times)
  return {"img_per_s": batch / median, "step_ms_median": 1e3 * median,
          "step_ms_min": 1e3 * min(times), "step_ms_max": 1e3 * max(times)}
