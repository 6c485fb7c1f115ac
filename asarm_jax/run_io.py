"""A run's I/O besides checkpoints: the console progress (training's, and a bar for any loop that
is a plain line per update off a terminal), ``WORKDIR/metrics.jsonl``, and SIGTERM/SIGINT turned
into a stop that every process agrees on."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from typing import Any, Callable, TextIO

import jax
import jax.numpy as jnp
import tqdm
from absl import logging

# Processes agree on stopping at every step (each step reduces every process's stop vote, see
# with_stop_vote), so all of them save the same step; a signal stops the run at most two steps
# after the one running when it arrives, whatever train.log_every.
STOP_AGREEMENT_EVERY = 1


class StopRequest:
  """Turns SIGTERM/SIGINT into a flag voted on in the next step (save, then exit 0)."""

  def __init__(self):
    self.requested = False
    self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("Signal %d received: saving a checkpoint at the next step boundary.", signum)
    self.requested = True

  def restore(self) -> None:
    for s, handler in self.previous.items():
      signal.signal(s, handler)


def with_stop_vote(train_step: Callable) -> Callable:
  """``(state, batch, rng, votes_B) -> (state, metrics, stop)``: ``train_step`` that also
  reduces the processes' stop votes (a batch-sharded bool array, each process filling its own
  rows) to one replicated bool, so every process reads the same answer without a host
  collective."""
  def step(state, tokens_BxL, base_rng, votes_B):
    state, metrics = train_step(state, tokens_BxL, base_rng)
    return state, metrics, jnp.any(votes_B)
  return step


class Trace:
  """``WORKDIR/metrics.jsonl``: one line ``{"step": s, <train metrics>}`` per logged step, floats
  in full precision (process 0 only; NaN is written ``NaN``).

  Opening it keeps only the lines of steps ``<= start_step`` (the restored checkpoint's), and
  drops a line torn by a kill, so the file is always the trace of the run that survived.
  """

  def __init__(self, path: str, start_step: int):
    self.path = path
    self.file = None
    if jax.process_index() != 0:
      return
    kept = []
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except json.JSONDecodeError:
            continue
          if record["step"] <= start_step:
            kept.append(json.dumps(record) + "\n")
    with open(path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)
    self.file = open(path, "a")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if self.file is not None:
      self.file.write(json.dumps({"step": step, **metrics}) + "\n")
      self.file.flush()

  def close(self) -> None:
    if self.file is not None:
      self.file.close()


LINE_EVERY_S = 30.0  # a progress bar off a terminal: a line at most this often


class _Lines(tqdm.tqdm):
  """tqdm that writes every refresh as a line of its own, and a last one when closed: readable
  in a log file, where a bar's carriage returns run together into one line."""

  def display(self, msg=None, pos=None):  # pylint: disable=unused-argument
    if msg is None:  # (an empty msg clears the bar: nothing to clear)
      self.fp.write(self.__str__() + "\n")
      self.fp.flush()
    return False

  def close(self):
    if not self.disable and self.last_print_n != self.n:
      self.display()
    super().close()


def bar(total: int, desc: str, unit: str, initial: int = 0,
        stream: TextIO | None = None) -> tqdm.tqdm:
  """A progress bar on ``stream`` (stderr): tqdm's where it is a terminal; elsewhere (a log
  file) a line ``desc: n/total (p%) | rate | ETA t`` at the start, at most every
  :data:`LINE_EVERY_S` seconds, and at the end."""
  stream = stream or sys.stderr
  if stream.isatty():
    return tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream,
                     dynamic_ncols=True)
  return _Lines(total=total, initial=initial, desc=desc, unit=unit, file=stream, leave=False,
                mininterval=LINE_EVERY_S,
                bar_format="{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) | {rate_fmt} | "
                           "ETA {remaining}{postfix}")


class Progress:
  """Training progress on the console (process 0): a tqdm bar with step, loss, tokens/s and ETA
  where stderr is a terminal, else a line ``[train] step N/M | loss | tokens/s | ETA`` per
  logged step."""

  def __init__(self, start: int, total: int, stream: TextIO | None = None):
    self.stream = stream or sys.stderr
    self.start, self.total = start, total
    self.began = time.perf_counter()
    self.enabled = jax.process_index() == 0
    self.bar = None
    if self.enabled and self.stream.isatty():
      self.bar = bar(total, "train", "step", start, self.stream)

  def elapsed(self) -> float:
    return time.perf_counter() - self.began

  def advance(self, step: int) -> None:
    if self.bar is not None:
      self.bar.update(step - self.bar.n)

  def log(self, step: int, metrics: dict[str, float]) -> None:
    """Shows the loss, the joint term's bits/token and the throughput of a logged step."""
    bits = f" | bits {metrics['bits_per_token']:.4g}" if "bits_per_token" in metrics else ""
    summary = f"loss {metrics['loss']:.4g}{bits} | {_rate(metrics['tokens_per_s'])} tokens/s"
    if self.bar is not None:
      self.bar.set_postfix_str(summary)
    elif self.enabled:
      remaining = (self.total - step) * self.elapsed() / max(step - self.start, 1)
      logging.info("[train] step %d/%d | %s | ETA %s", step, self.total, summary,
                   duration(remaining))

  def note(self, level: int, message: str, *args: Any) -> None:
    """Logs a line (process 0) without breaking the bar."""
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.clear()
    logging.log(level, message, *args)
    if self.bar is not None:
      self.bar.refresh()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None


def tensorboard_command(logdir: str) -> str:
  """The command that shows the curves in ``logdir``, and how to install it where it is not."""
  command = f"tensorboard --logdir {logdir}"
  return command if shutil.which("tensorboard") else f"{command} (pip install tensorboard first)"


def summary(metrics: dict[str, float]) -> str:
  """``name value | name value``, four significant digits."""
  return " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def _rate(value: float) -> str:
  return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def duration(seconds: float) -> str:
  """``1h02m``, ``3m05s`` or ``12s``."""
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"
