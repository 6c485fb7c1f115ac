"""Metrics to the console (steady log lines) and to TensorBoard event files (process 0 only)."""
from __future__ import annotations

import os

import jax
from absl import logging


class MetricWriter:

  def __init__(self, logdir: str):
    self.enabled = jax.process_index() == 0
    self.writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.writer = SummaryWriter(os.path.join(logdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
    if not self.enabled:
      return
    for name, value in metrics.items():
      self.writer.add_scalar(f"{prefix}/{name}", value, step)
    self.writer.flush()
    logging.info("[%s] step %d | %s", prefix, step,
                 " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _fmt(value: float) -> str:
  return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
