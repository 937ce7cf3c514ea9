"""What every command-line entry point shares: one-line errors for people."""

import logging as py_logging
import os
import runpy
import subprocess
import sys

from absl import app, flags, logging

from mobilenet_jax.errors import ConfigError

OVERRIDE = "--config."


def error_line(message: str):
  """Writes "error: message" to stderr as a line of its own, in one write. In a
  multi-process job JAX's distributed client and Gloo log from their own threads,
  in pieces: a line of theirs once wrapped around ours ("[Gloo] Rank 0 is connected
  to error: ... 1 peer ranks."), so ours starts on a new line."""
  sys.stderr.write(f"\nerror: {message}\n")
  sys.stderr.flush()


def fail(message: str, status: int = 2):
  error_line(message)
  sys.exit(status)


def unknown_key(config, path: str):
  """The first key of a dotted `path` that `config` lacks, and the valid ones."""
  node, seen = config, []
  for key in path.split("."):
    if not hasattr(node, "keys") or key not in node:
      valid = sorted(node.keys()) if hasattr(node, "keys") else []
      where = ".".join(["config"] + seen)
      return (f"unknown config key {'.'.join(seen + [key])!r}; valid keys of "
              f"{where}: {', '.join(valid)}.")
    node, seen = node[key], seen + [key]
  return None


def config_file_arg(argv):
  """The value of --config in argv ("path[:arg]"), or None."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def load_config(spec: str):
  """Runs get_config(arg) of a config file given as "path[:arg]"; a missing
  file or function is a ConfigError naming the fix."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist; pass a config file "
                      "such as --config configs/default.py.")
  get_config = runpy.run_path(path).get("get_config")
  if not callable(get_config):
    raise ConfigError(f"config file {path!r} does not define get_config(); a "
                      "config file defines get_config() returning the config, as "
                      "configs/default.py does.")
  return get_config(arg) if arg else get_config()


def parse_flags(argv):
  """absl flag parsing that turns a bad --config* flag into one line."""
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS.config is not None:
      flags.FLAGS.config.keys()  # config_flags loads lazily: fail here
    return rest
  except Exception as e:  # config_flags raises several types for one mistake
    message = f"{type(e).__name__}: {e}".splitlines()[0]
    spec = config_file_arg(argv)
    if spec is None:
      fail(message)
    try:
      config = load_config(spec)
    except ConfigError as load_error:
      fail(str(load_error))
    except Exception as load_error:
      fail(f"cannot load config {spec!r}: {load_error}".splitlines()[0])
    for arg in argv[1:]:
      if arg.startswith(OVERRIDE):
        unknown = unknown_key(config, arg[len(OVERRIDE):].split("=")[0])
        if unknown:
          fail(unknown)
    fail(f"bad config flag: {message}")


class QuietLibraries:
  """Drops the INFO chatter of orbax so the progress lines stay readable, and
  the tracebacks orbax logs for exceptions that it then raises: the run
  reports those itself, in one line."""

  def filter(self, record) -> bool:
    if "/orbax/" not in record.pathname:
      return True
    return record.levelno > py_logging.INFO and not record.exc_info


def run(main):
  """absl's app.run, with ConfigError printed as one line and exit status 2,
  and a failed write to the workdir (a full disk) as one line and status 1."""
  from mobilenet_jax.training.workdir import WriteError  # no JAX: stays light

  def guarded(argv):
    logging.get_absl_logger().addFilter(QuietLibraries())
    try:
      return main(argv)
    except ConfigError as e:
      fail(str(e))
    except WriteError as e:
      fail(str(e), status=1)
  app.run(guarded, flags_parser=parse_flags)


def git_commit() -> str:
  """The commit of this checkout (with "+changes" if it has local edits)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                          capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=root, capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return head + ("+changes" if dirty else "")
