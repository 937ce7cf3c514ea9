"""Transparent huge pages for XLA's CPU buffers, by relaunching with a glibc tunable.

On CPU, XLA allocates every call's large buffers with malloc, which glibc serves
from fresh mmaps and unmaps again on free, so each call page-faults all of its
activations in 4 KB pages (about a million faults for a MobileNetV2 train step at
batch 32; the trainer runs 4 steps a call on CPU, config.steps_per_call, which
allocates them once for the 4). With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
(glibc >= 2.35) glibc asks the kernel for 2 MB pages on those mmaps where the
kernel's THP mode is "madvise". glibc's mmap tunables cannot keep the block instead:
a thread other than the main one allocates it, and glibc maps any request larger than a
thread arena's 64 MB heap directly. One arena for all threads keeps it, and made the
step slower (docs/performance.md, "AMD EPYC, Zen 4").
Measured on this project's 2-core CPU (docs/performance.md): MobileNetV2 training
9.4 -> 14.0 img/s and inference 68 -> 104 img/s, with the same peak memory.

The tunable is read only when a process starts, so an entry point calls
`relaunch()` before its heavy imports; it re-executes the same command line once
with the tunable added (the process id stays the same). Set
MOBILENET_JAX_HUGEPAGES=0 to opt out.
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else ()
  except (AttributeError, ValueError, OSError):  # not glibc, or not Linux
    return ()


def thp_mode() -> str:
  """The kernel's THP mode: "always", "madvise" or "never" ("" if unknown)."""
  try:
    with open(THP_MODE_FILE, encoding="utf-8") as f:
      text = f.read()
  except OSError:
    return ""
  return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def wanted(environ=os.environ) -> bool:
  """Whether relaunching would add the tunable: glibc >= 2.35, THP on request
  ("always" needs nothing), not already set, not opted out."""
  return (environ.get("MOBILENET_JAX_HUGEPAGES", "1") != "0"
          and not active(environ)
          and glibc_version() >= (2, 35)
          and thp_mode() == "madvise")


def environment(on: bool = True, environ=os.environ) -> dict:
  """`environ` with the tunable added (on) or removed (off)."""
  env = dict(environ)
  tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t and t != TUNABLE]
  tunables += [TUNABLE] if on else []
  env["GLIBC_TUNABLES"] = ":".join(tunables)
  return env


def active(environ=os.environ) -> bool:
  return TUNABLE in environ.get("GLIBC_TUNABLES", "").split(":")


def relaunch():
  """Re-executes this command line with huge pages on, if that is wanted here."""
  if wanted():
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment())
