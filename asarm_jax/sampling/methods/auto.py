"""``method="auto"``: the fastest exact spec for a batch size, visible fraction and temperature.

The choice is read from ``auto_table.json`` beside this file, written by the sampling-speed
benchmark from side-by-side timings of every exact method on one GPU. Each entry is a
measured setting (batch, visible fraction, temperature) with the fastest configuration found
there (``k`` is the tree's node budget for ``"tree"``); a request takes the nearest setting
(batch on a log scale first, then visible fraction, then temperature).
"""
from __future__ import annotations

import functools
import json
import math
import os

from asarm_jax.sampling.spec import SamplerSpec

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "auto_table.json")


@functools.lru_cache(maxsize=4)
def load_table(path: str = TABLE_PATH) -> tuple[dict, ...]:
  """The entries of a table: ``{"batch", "visible", "temperature", "best": {method, k, depth,
  ngram}, ...}``."""
  with open(path) as f:
    return tuple(json.load(f)["entries"])


def choose(batch: int, visible_fraction: float, temperature: float,
           path: str = TABLE_PATH) -> SamplerSpec:
  """The spec measured fastest at the setting nearest to the request, at ``temperature``."""
  def distance(entry: dict) -> tuple[float, float, float]:
    return (abs(math.log2(entry["batch"]) - math.log2(max(batch, 1))),
            abs(entry["visible"] - visible_fraction), abs(entry["temperature"] - temperature))

  best = min(load_table(path), key=distance)["best"]
  return SamplerSpec.from_kwargs(best["method"], int(best["k"]), temperature,
                                 int(best.get("depth", 0)), int(best.get("ngram", 0)))
