"""The package's layout: every module imports, and every command defines the
absl flags it reads (a flag defined by another module's import exists only
while that import happens to be there)."""

import json
import os
import re
import subprocess
import sys

from absl import flags

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "mobilenet_jax")

# Frameworks only a peer needs (not install_requires): the peer may be skipped
# where the framework is missing, nothing else.
OPTIONAL = {"mobilenet_jax.peers.torch_peer": "torch"}
# Helpers that read a command's flag only after checking that it is defined.
GUARDED_READS = {"mobilenet_jax.cli": {"config"}}

# In a process of its own: the commands define clashing flags (--config,
# --workdir, --out, ...), so the flags an import defined are noted under the
# module that defined them and removed before the next import; report defines
# its flags only when run (define_flags).
WALK = r"""
import collections, importlib, json, pkgutil
from absl import flags
import mobilenet_jax
found, defined = {}, collections.defaultdict(list)
for info in pkgutil.walk_packages(mobilenet_jax.__path__, "mobilenet_jax."):
  try:
    module = importlib.import_module(info.name)
  except ModuleNotFoundError as e:
    found[info.name] = {"missing": e.name}
    continue
  if hasattr(module, "define_flags"):
    module.define_flags()
  found[info.name] = {"file": module.__file__}
  for owner, owned in list(flags.FLAGS.flags_by_module_dict().items()):
    if owner.startswith("mobilenet_jax"):
      for flag in list(owned):
        defined[owner].append(flag.name)
        delattr(flags.FLAGS, flag.name)
for name, info in found.items():
  info["flags"] = defined.get(name, [])
print(json.dumps(found))
"""


def walk():
  proc = subprocess.run([sys.executable, "-c", WALK], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def source_modules():
  """Every .py file under mobilenet_jax/, as a module name."""
  names = set()
  for directory, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(directory, f), ROOT)[:-3]
        names.add(rel.replace(os.sep, ".").removesuffix(".__init__"))
  return names


def test_every_module_imports_and_commands_define_the_flags_they_read():
  found = walk()
  # walk_packages misses a directory without __init__.py, and so does
  # setup.py's find_packages: such a module would be left out of the install.
  assert set(found) | {"mobilenet_jax"} == source_modules()
  for name, info in found.items():
    if "missing" in info:
      assert OPTIONAL.get(name) == info["missing"], f"{name}: no module {info['missing']!r}"
      continue
    assert info["file"].startswith(PACKAGE), (name, info["file"])
    source = open(info["file"]).read()
    reads = {r for r in re.findall(r"\bFLAGS\.([a-z]\w*)", source)
             if not hasattr(flags.FlagValues, r)}  # FlagValues methods are not flags
    undefined = reads - set(info["flags"]) - GUARDED_READS.get(name, set())
    assert not undefined, f"{name} reads flags it does not define: {sorted(undefined)}"
  # Commands apart from the library: only main, tools/ and studies/ define flags
  # (the Keras digits trainer and the peers parse their own arguments).
  commands = {n for n, i in found.items() if i.get("flags")}
  places = ("mobilenet_jax.main", "mobilenet_jax.tools.", "mobilenet_jax.studies.")
  assert all(n.startswith(places) for n in commands), sorted(commands)
  assert {"mobilenet_jax." + c for c in (
      "main", "tools.ablate", "tools.report", "tools.convert", "tools.export",
      "tools.launch", "tools.summary", "tools.benchmark", "tools.aot")} <= commands


# ------------------------------------------------------------- import floors ---

# What each part of the package may import from the package (its own part
# aside): a floor imports only floors below it.
COMMANDS = ("mobilenet_jax.main", "mobilenet_jax.tools", "mobilenet_jax.studies")
MAY_NOT_IMPORT = {
    "mobilenet_jax.ops": ("models", "training", "data", "interop", "peers", "defaults",
                          "madds", "parallel", "cli"),
    "mobilenet_jax.models": ("training", "data", "interop", "peers", "defaults", "cli"),
    "mobilenet_jax.data": ("models", "training", "interop", "peers", "defaults", "cli"),
    # The config is validated at the entry points, once (not again in the loop).
    "mobilenet_jax.training": ("interop", "peers", "cli", "defaults"),
    "mobilenet_jax.interop": ("peers", "cli"),
    "mobilenet_jax.peers": ("training", "interop", "models", "cli"),
    "mobilenet_jax.errors": ("",), "mobilenet_jax.timing": ("",),
    "mobilenet_jax.records": ("",), "mobilenet_jax.seed_stats": ("",),
}


def imports():
  """{module: the package's modules it imports}, at module level or inside a
  function: a deferred import still ties the two together."""
  import ast
  modules = source_modules()
  graph = {}
  for module in modules:
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    if not os.path.exists(path):
      path = os.path.join(ROOT, *module.split("."), "__init__.py")
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mobilenet_jax"):
        for alias in node.names:
          full = f"{node.module}.{alias.name}"
          found.add(full if full in modules else node.module)
      elif isinstance(node, ast.Import):
        found |= {a.name for a in node.names if a.name.startswith("mobilenet_jax")}
    graph[module] = found - {module, "mobilenet_jax"}
  return graph


def test_no_import_circle():
  graph, done, path = imports(), set(), []

  def visit(module):
    if module in path:
      raise AssertionError("import circle: " + " -> ".join(path[path.index(module):] + [module]))
    if module in done:
      return
    path.append(module)
    for other in sorted(graph.get(module, ())):
      visit(other)
    path.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)


def test_no_import_from_a_floor_back_up():
  for module, imported in imports().items():
    if not module.startswith(COMMANDS):
      up = sorted(m for m in imported if m.startswith(COMMANDS))
      assert not up, f"{module} (library) imports the commands {up}"
    for part, banned in MAY_NOT_IMPORT.items():
      if module == part or module.startswith(part + "."):
        bad = sorted(m for m in imported if not m.startswith(part)
                     and any(m == f"mobilenet_jax.{b}".rstrip(".")
                             or m.startswith(f"mobilenet_jax.{b}") for b in banned))
        assert not bad, f"{module} imports {bad}, a floor above it"


def test_the_commands_old_names_still_run_them():
  """Committed reports cite `python -m mobilenet_jax.ablate` and the like."""
  import importlib.util
  import mobilenet_jax
  for old, new in mobilenet_jax.MOVED.items():
    spec = importlib.util.find_spec(f"mobilenet_jax.{old}")
    assert spec.origin == importlib.util.find_spec(f"mobilenet_jax.{new}").origin, old
  proc = subprocess.run([sys.executable, "-m", "mobilenet_jax.summary", "--config",
                         "configs/default.py"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "Total params 719,034" in proc.stdout


# docs/design.md, "TensorFlow stays at the edge": the GPU machines have no TensorFlow.
IMPORT_TENSORFLOW = ("mobilenet_jax.data.", "mobilenet_jax.interop.",
                     "mobilenet_jax.peers.keras_peer", "mobilenet_jax.peers.tf_data_pipeline",
                     "mobilenet_jax.studies.keras_digits", "mobilenet_jax.tools.prepare_data",
                     "mobilenet_jax.tools.input_benchmark")


def test_only_the_edge_imports_tensorflow():
  import ast
  for module in source_modules():
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    if not os.path.exists(path):
      continue
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Import):
        names |= {a.name.split(".")[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names.add(node.module.split(".")[0])
    if names & {"tensorflow", "tensorflow_datasets", "keras", "tf_keras"}:
      assert module.startswith(IMPORT_TENSORFLOW), f"{module} imports TensorFlow"
