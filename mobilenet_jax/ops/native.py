"""Builds the native CPU kernels (depthwise_cpu.cc: the depthwise convolution,
the stem's convolution of an image's few channels, batch norm's sums) and
registers them with XLA.

The library is compiled on first use with the machine's C++ compiler against the
installed jaxlib's FFI headers, for this CPU (-march=native), and cached in
`$MOBILENET_JAX_CACHE` (default ~/.cache/mobilenet_jax) under a key of the source,
compiler command, CPU and jax version, as torch.utils.cpp_extension and Triton do.
Building per machine keeps the package pure Python and the kernel tuned to the CPU
it runs on. Without a working compiler the depthwise falls back to the pure-JAX
shifted form and the stem to XLA's convolution (`depthwise_impl="auto"`), or fails with the compiler's message when
`depthwise_impl="native"` was asked for.
"""

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from mobilenet_jax.errors import ConfigError
from mobilenet_jax.ops.sharding import vary_like

SOURCE = pathlib.Path(__file__).with_name("depthwise_cpu.cc")
# FFI handler symbol in the library -> XLA custom-call target name.
TARGETS = {
    "DepthwiseForward": "mobilenet_jax_depthwise_forward",
    "DepthwiseForwardFused": "mobilenet_jax_depthwise_forward_fused",
    "DepthwiseForwardStats": "mobilenet_jax_depthwise_forward_stats",
    "MaskedChannelSums": "mobilenet_jax_channel_sums",
    "DepthwiseInputGrad": "mobilenet_jax_depthwise_input_grad",
    "DepthwiseKernelGrad": "mobilenet_jax_depthwise_kernel_grad",
    "DepthwiseBackwardFused": "mobilenet_jax_depthwise_backward_fused",
    "NarrowConvForward": "mobilenet_jax_narrow_conv",
    "NarrowConvKernelGrad": "mobilenet_jax_narrow_conv_kernel_grad",
    "PointwiseKernelGrad": "mobilenet_jax_pointwise_kernel_grad",
    "PointwiseBackwardSums": "mobilenet_jax_pointwise_backward_sums",
}
# Tried in order: tuned for this CPU, then portable (compilers without -march=native).
ARCH_FLAGS = (["-march=native"], [])


class NativeUnavailable(ConfigError):
  """The native kernel cannot be built or loaded here."""


def cache_dir() -> pathlib.Path:
  default = pathlib.Path.home() / ".cache" / "mobilenet_jax"
  return pathlib.Path(os.environ.get("MOBILENET_JAX_CACHE", default))


def compiler() -> str:
  cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which(
      "clang++")
  if not cxx:
    raise NativeUnavailable("no C++ compiler found (set CXX, or install g++ or clang++)")
  return cxx


def compile_command(cxx: str, arch: list, out: str) -> list:
  return [cxx, "-O3", *arch, "-std=gnu++17", "-shared", "-fPIC", "-pthread",
          "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", out]


def cpu_signature() -> str:
  """What -march=native depends on, so a shared cache never serves another CPU."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
  except OSError:
    flags = ""
  return f"{platform.machine()} {platform.processor()} {flags}"


def library_path(cxx: str, arch: list) -> pathlib.Path:
  key = hashlib.sha256()
  for part in (SOURCE.read_bytes(), " ".join(compile_command(cxx, arch, "")).encode(),
               cpu_signature().encode(), jax.__version__.encode()):
    key.update(part)
  return cache_dir() / f"depthwise_cpu-{key.hexdigest()[:16]}.so"


def build(cxx: str, arch: list) -> pathlib.Path:
  """Compiles into the cache (atomically: parallel processes may race) if missing."""
  path = library_path(cxx, arch)
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
  os.close(fd)
  try:
    result = subprocess.run(compile_command(cxx, arch, tmp), capture_output=True, text=True)
    if result.returncode != 0:
      raise NativeUnavailable(f"compiling {SOURCE.name} failed:\n{result.stderr[-2000:]}")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


@functools.cache
def load() -> ctypes.CDLL:
  """Builds (once per machine) and registers the library's FFI targets (TARGETS)."""
  cxx, errors = compiler(), []
  for arch in ARCH_FLAGS:
    try:
      library = ctypes.CDLL(str(build(cxx, arch)))
      break
    except (NativeUnavailable, OSError) as e:
      errors.append(str(e))
  else:
    raise NativeUnavailable("\n".join(errors))
  for symbol, target in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  return library


def call(target: str, shape, *operands, geometry=None, **attributes):
  """The float32 result of `shape` (a list of shapes: a list of results) of
  TARGETS[target] on the operands, with a convolution's geometry (stride,
  dilation, pad_top, pad_left; None for a target that is not one) and any other
  integer attributes; varying over the device axes as the first operand."""
  load()
  if geometry is not None:
    attributes = dict(zip(("stride", "dilation", "pad_top", "pad_left"), geometry),
                      **attributes)
  result = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shape,
                        is_leaf=lambda s: isinstance(s, tuple))
  out = jax.ffi.ffi_call(TARGETS[target], result, vmap_method="sequential")(
      *operands, **{k: np.int64(v) for k, v in attributes.items()})
  return jax.tree.map(lambda o: vary_like(o, operands[0]), out)


@functools.cache
def available() -> bool:
  """Whether the kernel can be used here; says once why not."""
  try:
    load()
    return True
  except NativeUnavailable as e:
    logging.warning("Native CPU depthwise kernel unavailable, using the pure-JAX shifted "
                    "form (slower): %s", e)
    return False
