"""Timing a step the same way everywhere: the benchmark, its peers, the GPU
check and the TFLite export's latency."""

import statistics
import time


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
