"""What a round of ``auto`` costs, per draft size and number of slots: measured once per machine
and network, cached on disk, read by ``generate``.

A round of draft size 0 is one call of one row per batch row (sequential decoding's round); of
``k >= 1``, one fused call of ``(k + 1)^2`` rows (``assd_fused``'s round). ``python -m
benchmarks cost_model --workdir=W`` times exactly those rounds through ``generate`` and writes
them with :func:`save` to ``CACHE_DIR/cost_models/DEVICE-NETWORK.json`` (rerun it to refresh).
Without a file (or with one of another kind of round, :data:`ROUND`), every round costs its
one call: where calls are launch-bound, as at batch 1 on a GPU, that is close.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from typing import Sequence

import jax
import numpy as np

from asarm_jax.sampling.network import Network


def cache_dir() -> str:
  """``$ASARM_JAX_CACHE_DIR``, else ``~/.cache/asarm_jax``."""
  return os.environ.get("ASARM_JAX_CACHE_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "asarm_jax"))


def path(net: Network) -> str:
  """The cost file of ``net`` on this machine's first device: named by the device kind and a
  hash of the network's description (a flax model's fields: its shape, dtype and kernels)."""
  described = repr(getattr(net, "model", net))
  name = hashlib.blake2b(described.encode(), digest_size=6).hexdigest()
  device = jax.devices()[0].device_kind.replace(" ", "_").replace("/", "_")
  return os.path.join(cache_dir(), "cost_models", f"{device}-{name}.json")


ROUND = "assd_fused"  # the rounds a cost file times (earlier files timed assd's)


def prior_ms(sizes: Sequence[int]) -> np.ndarray:
  """The cost without a measurement: a round's one call, at every size."""
  return np.ones(len(sizes), np.float32)


@functools.lru_cache(maxsize=16)
def _load(file: str, modified: float) -> dict:  # ``modified`` keys the cache
  with open(file, encoding="utf-8") as f:
    return json.load(f)


def round_ms(net: Network, sizes: Sequence[int], num_slots: int) -> np.ndarray:
  """float32 ``S``: ms of a round at each draft size of ``sizes`` with ``num_slots`` slots,
  interpolated in log batch between the measured batch sizes (clamped at the ends); the prior
  (:func:`prior_ms`) where a size was not measured or there is no file."""
  file = path(net)
  if not os.path.exists(file):
    logging.info("auto: no cost model at %s; choosing draft sizes by calls per round "
                 "(python -m benchmarks cost_model --workdir=W measures one).", file)
    return prior_ms(sizes)
  table = _load(file, os.path.getmtime(file))
  if table.get("round") != ROUND:
    logging.info("auto: %s times other rounds than %s; choosing by calls (rerun python -m "
                 "benchmarks cost_model).", file, ROUND)
    return prior_ms(sizes)
  batch_M = np.log2(np.asarray(table["batch_sizes"], np.float64))
  measured = {k: np.asarray(column) for k, column in zip(table["sizes"],
                                                        np.asarray(table["round_ms"]).T)}
  if not all(k in measured for k in sizes):
    return prior_ms(sizes)
  return np.asarray([np.interp(np.log2(num_slots), batch_M, measured[k]) for k in sizes],
                    np.float32)


def save(net: Network, table: dict) -> str:
  """Writes ``table`` (``{"batch_sizes": M, "sizes": S, "round_ms": M x S, ...}``) as
  ``net``'s cost file, marked as timing :data:`ROUND` rounds; returns its path."""
  table = {**table, "round": ROUND}
  file = path(net)
  os.makedirs(os.path.dirname(file), exist_ok=True)
  tmp = f"{file}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(table, f, indent=1)
  os.replace(tmp, file)
  return file
