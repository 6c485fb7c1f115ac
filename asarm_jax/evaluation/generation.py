"""Resumable filling of many prompt rows by continuous batching, cached in a JSONL file.

Every row has a key. Rows are handed to ``sampling.generate`` a dispatch at a time (many rows
through ``batch_size`` slots: a slot whose row is done takes the next one inside the compiled
loop), and the rows of a finished dispatch are appended to the cache as ``{"key", "hidden",
"num_calls", "num_generated"}`` (``hidden``: the generated tokens at the row's hidden positions,
in position order). A later call with the same file generates only the rows not yet there, so
an interrupted evaluation resumes. The cache is only valid for one model, sampler and set of
prompts: callers put those in its file name. Each dispatch is pulled to the host and written
once the next one has been dispatched, so that the host's work overlaps the accelerator's; an
interruption loses at most the rows of two dispatches.

Each row draws from its own random key, folded from the seed and a 64-bit hash of the row's
key, so a row's sample depends neither on the rows dispatched with it nor on the slots, the
dispatch size or a resume. Rows go longest first (by hidden count), so that the rows still in
flight when a dispatch's queue runs dry are its shortest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import numpy as np

from asarm_jax import run_io, sampling


@dataclasses.dataclass(frozen=True)
class Row:
  """One prompt: ``tokens`` (int32[L]) and ``visible`` (bool[L]); positions ``>= length`` pad."""
  key: str
  tokens: np.ndarray
  visible: np.ndarray
  length: int

  def num_hidden(self) -> int:
    return int((~self.visible[:self.length]).sum())

  def filled(self, hidden: Sequence[int]) -> np.ndarray:
    """``tokens`` (int32[L]) with ``hidden`` written at the hidden positions."""
    out = self.tokens.copy()
    out[np.flatnonzero(~self.visible[:self.length])] = hidden
    return out


def load_records(path: str) -> dict[str, dict]:
  """Records of a cache file by key; a line cut short by an interrupted run is dropped (and the
  file rewritten without it, so that appending continues on a clean line)."""
  if not os.path.exists(path):
    return {}
  records, broken = {}, False
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        broken = True
        continue
      records[record["key"]] = record
  if broken:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in records.values())
    os.replace(tmp, path)
  return records


def _arrays(rows: Sequence[Row], num_rows: int) -> tuple[np.ndarray, ...]:
  """``tokens, visible, length`` of ``rows`` padded to ``num_rows`` with all-visible rows
  (nothing to generate), so every dispatch has one shape."""
  width = rows[0].tokens.shape[0]
  tokens = np.zeros((num_rows, width), np.int32)
  visible = np.ones((num_rows, width), bool)
  length = np.full((num_rows,), width, np.int32)
  for b, row in enumerate(rows):
    tokens[b], visible[b], length[b] = row.tokens, row.visible, row.length
  return tokens, visible, length


def _digests(keys: Sequence[str]) -> np.ndarray:
  """uint32 ``N x 2``: the two little-endian halves of each key's 64-bit BLAKE2b hash."""
  return np.stack([np.frombuffer(hashlib.blake2b(key.encode(), digest_size=8).digest(), "<u4")
                   for key in keys])


def row_keys(base_rng: jax.Array, keys: Sequence[str]) -> jax.Array:
  """The random key of each row (``N`` keys): ``base_rng`` folded with the two halves of the
  row key's hash, in one compiled call."""
  return _fold_in_each(base_rng, _digests(keys))


@jax.jit
def _fold_in_each(rng: jax.Array, data_NxD: jax.Array) -> jax.Array:
  """``N`` keys: ``rng`` folded with each uint32 of row ``n`` of ``data_NxD`` in turn."""

  def fold(data_D):
    key = rng
    for i in range(data_D.shape[0]):
      key = jax.random.fold_in(key, data_D[i])
    return key

  return jax.vmap(fold)(data_NxD)


def dispatch_size(num_rows: int, batch_size: int) -> int:
  """Rows per dispatch for ``num_rows`` rows through ``batch_size`` slots: the fewest equal
  dispatches (one compiled shape) of at most 8 rows a slot (at least 64 rows).

  A dispatch's last rows leave slots idle while they finish; with 8 rows a slot, sorted longest
  first, that is a few percent of its time, and the progress moves every few seconds."""
  num_dispatches = -(-num_rows // max(8 * batch_size, 64))
  return -(-num_rows // num_dispatches)


class Filled(NamedTuple):
  """``records[key]``: the record of every row; ``num_generated``: how many rows were not in
  the cache; ``seconds``: the wall time of generating those (compilation included)."""
  records: dict[str, dict]
  num_generated: int
  seconds: float


def generate_rows(model: nn.Module, params: Any, rows: Sequence[Row], path: str, *,
                  spec: sampling.SamplerSpec, batch_size: int, seed: int, desc: str,
                  rows_per_dispatch: int | None = None) -> Filled:
  """Fills every row (all of one width ``L``) with the sampler ``spec``, ``batch_size`` rows
  at a time by continuous batching, skipping rows already in the cache at ``path``;
  ``rows_per_dispatch`` rows per ``sampling.generate`` call (the last padded with rows that
  have nothing to generate; default :func:`dispatch_size`). ``rows_per_dispatch=batch_size``
  is plain batching: one batch per dispatch."""
  if len({row.key for row in rows}) != len(rows):
    raise ValueError(f"{desc}: row keys are not unique")
  records = load_records(path)
  for row in rows:
    if row.key in records and len(records[row.key]["hidden"]) != row.num_hidden():
      raise ValueError(f"{path} holds a record for {row.key!r} with another number of hidden "
                       "tokens; it was written for other prompts: remove it")
  todo = sorted((row for row in rows if row.key not in records), key=Row.num_hidden,
                reverse=True)
  print(f"{desc}: {len(rows) - len(todo)} rows cached, {len(todo)} to generate", flush=True)
  if not todo:
    return Filled({row.key: records[row.key] for row in rows}, 0, 0.0)
  start_s = time.perf_counter()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  base_rng = jax.random.key(seed)
  size = rows_per_dispatch or dispatch_size(len(todo), batch_size)
  slots = min(batch_size, size)
  totals = {"calls": 0, "generated": 0}
  with open(path, "a", encoding="utf-8") as f, run_io.bar(len(todo), desc, "row") as bar:

    def save(part: Sequence[Row], out: sampling.Generation) -> None:
      filled, calls, generated = jax.device_get((out.tokens_BxL, out.num_calls_B,
                                                 out.num_generated_B))
      for b, row in enumerate(part):
        hidden = filled[b][np.flatnonzero(~row.visible[:row.length])]
        record = {"key": row.key, "hidden": [int(t) for t in hidden],
                  "num_calls": int(calls[b]), "num_generated": int(generated[b])}
        records[row.key] = record
        f.write(json.dumps(record) + "\n")
        totals["calls"] += record["num_calls"]
        totals["generated"] += record["num_generated"]
      f.flush()
      bar.set_postfix_str(f"{totals['generated'] / max(totals['calls'], 1):.2f} tokens/call",
                          refresh=False)
      bar.update(len(part))

    pending = None  # the dispatch in flight: saved after the next one is dispatched
    for first in range(0, len(todo), size):
      part = todo[first:first + size]
      tokens, visible, length = _arrays(part, size)
      keys = [row.key for row in part] + [f"{desc}#padding{b}" for b in range(size - len(part))]
      out = sampling.generate(model, params, tokens, visible, row_keys(base_rng, keys),
                              spec=spec, length_B=length, slots=slots)
      if pending is not None:
        save(*pending)
      pending = (part, out)
    save(*pending)
  return Filled({row.key: records[row.key] for row in rows}, len(todo),
                time.perf_counter() - start_s)


def tokens_per_call(records: Sequence[dict]) -> float:
  """Generated tokens per network call, pooled over ``records`` (NaN without calls)."""
  calls = sum(r["num_calls"] for r in records)
  return sum(r["num_generated"] for r in records) / calls if calls else math.nan
