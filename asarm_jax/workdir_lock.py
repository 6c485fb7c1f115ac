"""One writer per workdir: an exclusive lock on ``WORKDIR/.lock``, which names its holder.

Training and conversion hold it while they write (the data a run prepares in its workdir
included); a second writer fails at once with :class:`WorkdirBusy`, naming the holder's host and
pid, before it writes anything. Readers (sampling, evaluation, which writes only under
``WORKDIR/eval``) take no lock.

The lock is an ``fcntl.flock`` on the file, so the kernel releases it when the holder ends,
however it ends: a lock file left by a killed process is stale, and the next writer takes it
over. With several processes (``jax.distributed``) process 0 holds it for all of them.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

LOCK_NAME = ".lock"


class WorkdirBusy(Exception):
  """Another process holds the workdir's lock."""


def holder(workdir: str) -> dict | None:
  """What the lock file of ``workdir`` says of its (last) holder: ``{"host", "pid", "what",
  "since"}``, or ``None`` without a readable lock file."""
  try:
    with open(os.path.join(workdir, LOCK_NAME), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _busy(workdir: str) -> WorkdirBusy:
  who = holder(workdir) or {}
  return WorkdirBusy(
      f"{workdir} is in use: {who.get('what', 'another command')} (pid {who.get('pid', '?')} on "
      f"{who.get('host', '?')}, since {who.get('since', '?')}) holds {workdir}/{LOCK_NAME}; "
      "wait for it to end, or use another --workdir.")


def _acquire(path: str) -> int:
  """A descriptor of ``path`` locked by this process; raises ``BlockingIOError`` if another
  holds it. Retries when a releasing holder removed the file between our open and our lock."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
        return fd
    except BaseException:
      os.close(fd)
      raise
    os.close(fd)  # locked a file that was removed meanwhile: lock the new one


def _write_holder(fd: int, what: str) -> None:
  record = {"host": socket.gethostname(), "pid": os.getpid(), "what": what,
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)


def _agreed(locked: bool) -> bool:
  """Whether process 0 locked the workdir, as every process reads it."""
  if jax.process_count() == 1:
    return locked
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(locked)))


@contextlib.contextmanager
def hold(workdir: str, what: str) -> Iterator[None]:
  """Holds the lock of ``workdir`` (created if missing) for ``what`` (e.g. ``"training"``);
  raises :class:`WorkdirBusy` at once if another process holds it. On exit the lock file is
  removed, and so is the workdir if this call created it and it is empty."""
  created = not os.path.isdir(workdir)
  path = os.path.join(workdir, LOCK_NAME)
  fd, error = None, None
  try:
    if jax.process_index() == 0:
      try:
        os.makedirs(workdir, exist_ok=True)
        fd = _acquire(path)
        _write_holder(fd, what)
      except BlockingIOError:  # another process holds it
        pass
      except OSError as e:  # raised once every process has the answer
        error = e
    if not _agreed(fd is not None and error is None):
      if error is not None:
        raise error
      raise _busy(workdir) if jax.process_index() == 0 else WorkdirBusy(
          f"{workdir} is in use by another command (process 0 could not lock it).")
    yield
  finally:
    if fd is not None:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)  # before unlocking: a writer that opened this file retries on a new one
      os.close(fd)
    if created and jax.process_index() == 0:
      with contextlib.suppress(OSError):  # not empty: the run wrote something
        os.rmdir(workdir)
