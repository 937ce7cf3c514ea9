"""MobileNet V1 and V2 in JAX/Flax: the library (models/, ops/, data/,
training/, interop/ and the modules beside them), the commands a user runs
(tools/, and main.py, which trains) and experiments' own code (studies/)."""

import importlib.abc
import importlib.util
import sys

# Commands that lived at the top of the package until 2026-12. Committed
# reports and users' scripts cite `python -m mobilenet_jax.<old>`; it runs
# the command from its new home. New code uses the new names.
MOVED = {
    "ablate": "tools.ablate", "report": "tools.report", "launch": "tools.launch",
    "summary": "tools.summary", "export": "tools.export", "convert": "tools.convert",
    "benchmark": "tools.benchmark", "input_benchmark": "tools.input_benchmark",
    "prepare_data": "tools.prepare_data", "aot": "tools.aot",
    "gpu_check": "tools.gpu_check", "manifold": "studies.manifold",
    "peers.keras_digits": "studies.keras_digits",
}


class _MovedCommands(importlib.abc.MetaPathFinder):
  """Finds `mobilenet_jax.<old>` at its new file, under its old name."""

  def find_spec(self, name, path=None, target=None):
    old = name[len(__name__) + 1:] if name.startswith(__name__ + ".") else None
    if old not in MOVED:
      return None
    new = importlib.util.find_spec(f"{__name__}.{MOVED[old]}")
    return importlib.util.spec_from_file_location(name, new.origin)


if not any(isinstance(f, _MovedCommands) for f in sys.meta_path):
  sys.meta_path.append(_MovedCommands())
