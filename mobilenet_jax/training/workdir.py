"""A run's workdir: checked before anything runs, owned by one run at a time.

A run takes an exclusive lock (flock) on WORKDIR/workdir.lock for its whole
life. The kernel releases it when the process ends, however it ends (SIGKILL
included), so a stale lock never blocks a resume, while a second run started
on a live workdir is refused with one line naming the holder. In a
multi-process job, process 0 takes the lock and every process hears its
answer, so a second job is refused whatever its process count.

Also here: the error a failed write (a full disk) becomes, and how an
exception from orbax or TensorStore is said in one line.
"""

import fcntl
import json
import os
import re
import socket
import tempfile
import time
from typing import Optional

from absl import logging

from mobilenet_jax.errors import ConfigError

LOCK_NAME = "workdir.lock"


class WorkdirError(ConfigError):
  """The workdir cannot be used (a file, not writable, owned by a live run, or
  no checkpoint in it restores); the message says which and what to do."""


class WriteError(RuntimeError):
  """A write to the workdir failed (e.g. the disk is full): the run stops,
  and what was saved before is intact. Entry points print it as one line and
  exit 1."""


# ------------------------------------------------------------------ paths ---

def blocking_file(path: str) -> Optional[str]:
  """The first component of `path` that exists and is not a directory."""
  parts = os.path.abspath(path).split(os.sep)
  for i in range(2, len(parts) + 1):
    prefix = os.sep.join(parts[:i])
    if not os.path.exists(prefix):
      return None
    if not os.path.isdir(prefix):
      return prefix
  return None


def check(path: str, flag: str = "--workdir"):
  """Creates `path` unless it exists; a ConfigError (one line) if it is a
  file, under a file, or cannot be created or written by this process."""
  blocker = blocking_file(path)
  if blocker == os.path.abspath(path):
    raise WorkdirError(f"{flag} {path} is a file, not a directory; choose another "
                       f"{flag} (or move the file away).")
  if blocker:
    raise WorkdirError(f"cannot create {flag} {path}: {blocker} is a file, not a "
                       f"directory; choose another {flag}.")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot create {flag} {path}: {e.strerror}; choose a "
                       f"{flag} in a directory you can write.") from None
  try:  # os.access answers yes to root on a read-only file system
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise WorkdirError(f"{flag} {path} is not writable ({e.strerror}); make it "
                       f"writable or choose another {flag}.") from None


# ------------------------------------------------------------------- lock ---

class Lock:
  """An exclusive flock on WORKDIR/workdir.lock, which says who holds it."""

  def __init__(self, workdir: str, flag: str = "--workdir"):
    self.path = os.path.join(workdir, LOCK_NAME)
    # Opened without truncating: the file names the live holder, if any.
    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = read_holder(self.path)
      os.close(self.fd)
      raise WorkdirError(busy_message(workdir, holder, flag)) from None
    except OSError as e:  # a file system without locks: run, but say so
      logging.warning("cannot lock %s (%s): a second run started on this workdir "
                      "would not be stopped.", self.path, e.strerror)
      return
    try:
      os.ftruncate(self.fd, 0)
      os.write(self.fd, json.dumps({
          "pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
    except OSError:
      pass  # a full disk: the lock holds all the same, unnamed

  def release(self):
    if self.fd is None:
      return
    try:
      os.ftruncate(self.fd, 0)  # no holder named once it is free
    except OSError:
      pass
    fcntl.flock(self.fd, fcntl.LOCK_UN)
    os.close(self.fd)
    self.fd = None


def read_holder(path: str) -> str:
  try:
    with open(path) as f:
      h = json.load(f)
    return f"pid {h['pid']} on host {h['host']}, started {h['started']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "its process has not written its name"


def busy_message(workdir: str, holder: str, flag: str) -> str:
  return (f"{flag} {workdir} is in use by another run ({holder}); wait for it "
          f"to end or stop it, or choose another {flag}. Nothing was changed.")


class Owner:
  """`with Owner(workdir):` checks the path, then holds the workdir's lock.

  Multi-process: process 0 locks and tells the others (a collective), so
  every process of a second job stops with the same line.
  """

  def __init__(self, workdir: str, flag: str = "--workdir"):
    self.workdir, self.flag, self.lock = workdir, flag, None

  def __enter__(self):
    check(self.workdir, self.flag)
    import jax  # here, so that cli (which imports WriteError) stays light
    error = None
    if jax.process_index() == 0:
      try:
        self.lock = Lock(self.workdir, self.flag)
      except WorkdirError as e:
        error = e
    if jax.process_count() > 1 and not agree(error is None, source_only=True):
      error = error or WorkdirError(busy_message(
          self.workdir, read_holder(os.path.join(self.workdir, LOCK_NAME)), self.flag))
    if error:
      raise error
    return self

  def __exit__(self, *exc):
    self.release()

  def release(self):
    if self.lock:
      self.lock.release()


def claim(workdir: str, flag: str = "--workdir") -> Owner:
  """Owner(workdir), entered: held until release() or the process ends."""
  return Owner(workdir, flag).__enter__()


def agree(ok: bool, source_only: bool = False) -> bool:
  """Multi-process: whether `ok` holds on every process (or, with
  source_only, on process 0). One process alone: `ok`."""
  import jax
  if jax.process_count() == 1:
    return ok
  import numpy as np
  from jax.experimental import multihost_utils
  if source_only:
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


# ---------------------------------------------------------------- errors ---

def causes(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def describe(error: BaseException, where: Optional[str] = None, limit: int = 300) -> str:
  """A failed read or write in one line: "path: cause" where the error
  names them (Python's OSError, TensorStore's os_error_code; `where` if it
  names no path), else its type and the first line of its message."""
  for e in causes(error):
    if isinstance(e, OSError) and e.errno:
      path = e.filename or where
      return f"{path}: {e.strerror}" if path else e.strerror
  for e in causes(error):
    text = str(e)
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
      paths = re.findall(r'"(/[^"]+)"', text) or [where]
      cause = os.strerror(int(code.group(1)))
      return f"{paths[-1]}: {cause}" if paths[-1] else cause
  root = error
  while root.__cause__ is not None:  # e.g. TensorStore's reason under orbax's wrapper
    root = root.__cause__
  text = str(root).strip()
  line = f"{type(root).__name__}: {text.splitlines()[0] if text else ''}"
  return line if len(line) <= limit else line[:limit - 3] + "..."

