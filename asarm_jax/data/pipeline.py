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
from absl import logging

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
  """Iterates int32 ``[batch_size, seq_len]`` batches of ``docs_tokens`` (a grain ``MapDataset``,
  finite or endless), packed into ``batch_size`` row streams.

  Document ``i`` goes to row ``i % batch_size``, and row ``b`` of each batch is the next
  ``seq_len`` tokens of its own stream: the concatenation of documents ``b, b + batch_size, ...``.
  A long document therefore fills one row for many batches, not whole batches, and every batch
  mixes ``batch_size`` places in the document order. A finite dataset ends when a row cannot be
  filled. With ``batch_size=1`` this is plain packing of the whole stream.

  ``get_state()`` is ``{"doc_index": [B], "token_offset": [B]}``: row ``b``'s next token is
  ``docs_tokens[doc_index[b]][token_offset[b]]``; ``set_state`` on an iterator over the same
  dataset continues bit-identically.
  """

  def __init__(self, docs_tokens: grain.MapDataset, *, batch_size: int, seq_len: int):
    self._docs = docs_tokens
    self._batch_size = batch_size
    self._seq_len = seq_len
    self.set_state({"doc_index": list(range(batch_size)), "token_offset": [0] * batch_size})

  def __iter__(self) -> PackedIterator:
    return self

  def __next__(self) -> np.ndarray:
    batch_BxL = np.empty((self._batch_size, self._seq_len), np.int32)
    for row in range(self._batch_size):
      filled = 0
      while filled < self._seq_len:
        if self._doc_index[row] >= len(self._docs):
          raise StopIteration
        if self._tokens[row] is None:
          self._tokens[row] = self._docs[self._doc_index[row]]
        tokens, offset = self._tokens[row], self._token_offset[row]
        take = min(self._seq_len - filled, tokens.size - offset)
        batch_BxL[row, filled:filled + take] = tokens[offset:offset + take]
        filled += take
        self._token_offset[row] += take
        if self._token_offset[row] == tokens.size:
          self._doc_index[row] += self._batch_size
          self._token_offset[row], self._tokens[row] = 0, None
    return batch_BxL

  def get_state(self) -> dict[str, Any]:
    """JSON-serializable position of every row stream."""
    return {"doc_index": list(self._doc_index), "token_offset": list(self._token_offset)}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from ``get_state()``'s position. A position of another number of rows (another
    per-process batch size, or a single int stream from before row streams) cannot continue
    exactly: every row then restarts at the earliest unfinished document, with a warning."""
    doc_index = np.atleast_1d(state["doc_index"]).astype(int).tolist()
    token_offset = np.atleast_1d(state["token_offset"]).astype(int).tolist()
    if len(doc_index) != self._batch_size:
      start = min(doc_index)
      logging.warning("The data position has %d row stream(s), this iterator %d: the data order "
                      "does not continue exactly (the rows restart at document %d).",
                      len(doc_index), self._batch_size, start)
      doc_index = [start + row for row in range(self._batch_size)]
      token_offset = [0] * self._batch_size
    self._doc_index, self._token_offset = doc_index, token_offset
    self._tokens: list[np.ndarray | None] = [None] * self._batch_size


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
