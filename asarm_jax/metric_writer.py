"""Metrics to TensorBoard event files (process 0 only): ``tensorboard --logdir WORKDIR/tensorboard``.

The console shows a progress line or bar instead (``train._Progress``).
"""
from __future__ import annotations

import os
import re

import jax

_ILLEGAL = re.compile(r"[^-/\w.]")  # what TensorBoard's summary names may not contain


class MetricWriter:
  """Scalars ``{prefix}/{name}`` per step under ``logdir/tensorboard``.

  ``purge_step`` (a resumed run's first step) makes TensorBoard hide the events of that step and
  later ones written before, e.g. by a run killed after its last checkpoint, so that curves do
  not fold back.
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    self.logdir = os.path.join(logdir, "tensorboard")
    self.writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.writer = SummaryWriter(self.logdir, purge_step=purge_step)

  def write(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
    if self.writer is None:
      return
    for name, value in metrics.items():
      self.writer.add_scalar(_ILLEGAL.sub("_", f"{prefix}/{name}"), value, step)
    self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
