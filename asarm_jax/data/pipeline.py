"""Packed token batches: lazily tokenized documents (grain) cut into fixed-length rows.

The stream is ``doc, <eos>, doc, <eos>, ...`` in a per-epoch shuffled order; rows are
consecutive ``seq_len`` windows of it, so there is no padding and a document may straddle rows
and batches. The iterator's position is two integers, so its state is tiny and exact.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from asarm_jax.data.tokenizer import Tokenizer


def decode_example(example: dict[str, bytes]) -> dict[str, str]:
  """A tfds example (bytes features) as ``{"text": str, "path": str}``."""
  return {"text": example["text"].decode("utf-8"), "path": example["path"].decode("utf-8")}


def shard_documents(source: Sequence[dict[str, bytes]], shard_index: int = 0,
                    shard_count: int = 1) -> grain.MapDataset:
  """Decoded examples ``shard_index, shard_index + shard_count, ...`` of a tfds data source."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  return grain.MapDataset.source(source)[shard_index::shard_count].map(decode_example)


def document_tokens(documents: grain.MapDataset, tokenizer: Tokenizer) -> grain.MapDataset:
  """Each document as int32 ``[num_tokens + 1]`` token ids ending in ``<eos>``."""
  return documents.map(
      lambda doc: np.asarray(tokenizer.encode(doc["text"]) + [tokenizer.eos_id], np.int32))


def epoch_shuffled(documents: grain.MapDataset, seed: int) -> grain.MapDataset:
  """Endless repetition of ``documents``, reshuffled each epoch.

  Grain shuffles epoch ``e`` with seed ``s + e``; ``s`` is hashed from ``seed`` so that runs with
  nearby seeds do not share epoch orders.
  """
  if len(documents) == 0:
    raise ValueError("no documents to iterate over")
  mixed_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
  return documents.shuffle(seed=mixed_seed).repeat()


class PackedIterator:
  """Iterates int32 ``[batch_size, seq_len]`` windows of the concatenated token arrays of
  ``docs_tokens`` (a grain ``MapDataset``, finite or endless; a finite one ends when it cannot
  fill another batch).

  ``get_state()`` is ``{"doc_index", "token_offset"}``: the next token is
  ``docs_tokens[doc_index][token_offset]``; ``set_state`` on an iterator over the same
  dataset continues bit-identically.
  """

  def __init__(self, docs_tokens: grain.MapDataset, *, batch_size: int, seq_len: int):
    self._docs = docs_tokens
    self._batch_size = batch_size
    self._seq_len = seq_len
    self.set_state({"doc_index": 0, "token_offset": 0})

  def __iter__(self) -> PackedIterator:
    return self

  def __next__(self) -> np.ndarray:
    flat_BL = np.empty(self._batch_size * self._seq_len, np.int32)
    filled = 0
    while filled < flat_BL.size:
      if self._doc_index >= len(self._docs):
        raise StopIteration
      if self._tokens is None:
        self._tokens = self._docs[self._doc_index]
      take = min(flat_BL.size - filled, self._tokens.size - self._token_offset)
      flat_BL[filled:filled + take] = self._tokens[self._token_offset:self._token_offset + take]
      filled += take
      self._token_offset += take
      if self._token_offset == self._tokens.size:
        self._doc_index, self._token_offset, self._tokens = self._doc_index + 1, 0, None
    return flat_BL.reshape(self._batch_size, self._seq_len)

  def get_state(self) -> dict[str, Any]:
    """JSON-serializable position in the token stream."""
    return {"doc_index": self._doc_index, "token_offset": self._token_offset}

  def set_state(self, state: dict[str, Any]) -> None:
    self._doc_index = int(state["doc_index"])
    self._token_offset = int(state["token_offset"])
    self._tokens = None


def packed_rows(docs_tokens: grain.MapDataset, *, seq_len: int, num_rows: int) -> list[np.ndarray]:
  """Up to ``num_rows`` int32 ``[1, seq_len]`` rows of a finite stream, from its start."""
  return list(itertools.islice(PackedIterator(docs_tokens, batch_size=1, seq_len=seq_len),
                               num_rows))


def group_rows(rows: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
  """Full ``[batch_size, seq_len]`` batches of ``rows``; if there are too few rows for one,
  a single smaller batch of all of them (none if there are no rows)."""
  full = [np.concatenate(rows[i:i + batch_size])
          for i in range(0, len(rows) - batch_size + 1, batch_size)]
  return full or ([np.concatenate(rows)] if rows else [])
