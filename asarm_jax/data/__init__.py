"""Data: local-folder tfds datasets, a SentencePiece tokenizer and packed, resumable batches.

Everything is driven by the ``config.data`` block (:func:`default_data_config`).
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from asarm_jax.data import builders, pipeline
from asarm_jax.data.pipeline import PackedIterator
from asarm_jax.data.tokenizer import Tokenizer

__all__ = ["PackedIterator", "Tokenizer", "corpus_size", "default_data_config", "heldout_batches",
           "heldout_documents", "prepare", "train_iterator"]


def default_data_config() -> ml_collections.ConfigDict:
  """Defaults: the Python standard library, 5% held out, 8k vocab, 512-token rows.

  The sequence fields are tuples: ``config_flags`` can override tuples from the command line
  (``--config.data.source_dirs="('/a', '/b')"``) but not lists; assigning a list converts it.
  """
  return ml_collections.ConfigDict(dict(
      name="python_code",          # "python_code" | "text_files"
      source_dirs=(),              # empty: the builder's default (stdlib for python_code)
      exclude_patterns=(),         # fnmatch globs over relative paths
      extensions=(),               # empty: .py (python_code) or .txt/.md/.rst (text_files)
      max_files=0,                 # 0 = all
      heldout_fraction=0.05,
      vocab_size=8192,
      seq_len=512,
      tokenizer_max_chars=5_000_000,
  ))


def _builder(config: ml_collections.ConfigDict, data_dir: str) -> builders.FolderBuilder:
  return builders.build(config.name, data_dir, **builders.options(config))


def _split(config: ml_collections.ConfigDict, data_dir: str, split: str):
  return _builder(config, data_dir).as_data_source(split)


def prepare(config: ml_collections.ConfigDict, data_dir: str,
            tokenizer: Tokenizer | None = None) -> Tokenizer:
  """Builds the dataset (if not yet in ``data_dir``) and trains the tokenizer on its train split,
  or loads it from ``<dataset version dir>/tokenizer_v<vocab>_c<max chars>/tokenizer.model``.
  A given ``tokenizer`` (that of the weights a run starts from) is used as it is."""
  builder = _builder(config, data_dir)
  if tokenizer is not None:
    return tokenizer
  path = os.path.join(builder.data_dir,
                      f"tokenizer_v{config.vocab_size}_c{config.tokenizer_max_chars}",
                      "tokenizer.model")
  if os.path.exists(path):
    return Tokenizer.load(path)
  train = pipeline.shard_documents(builder.as_data_source("train"))
  return Tokenizer.train((doc["text"] for doc in train), config.vocab_size, path,
                         max_chars=config.tokenizer_max_chars)


def corpus_size(config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: str, *,
                sample: int = 256, seed: int = 0) -> dict[str, float]:
  """The train split's size: documents, UTF-8 bytes, and tokens (with one ``<eos>`` each),
  estimated from the bytes per token of ``sample`` random documents (exact when ``sample`` covers
  them all). A run's tokens over ``tokens`` is how many epochs it trains."""
  train = pipeline.shard_documents(_split(config, data_dir, "train"))
  texts = [train[i]["text"] for i in range(len(train))]
  sizes = np.array([len(text.encode("utf-8")) for text in texts], np.int64)
  chosen = np.random.default_rng(seed).permutation(len(texts))[:sample]
  sample_tokens = sum(len(tokenizer.encode(texts[i])) for i in chosen)
  tokens = sizes.sum() * sample_tokens / max(int(sizes[chosen].sum()), 1) + len(texts)
  return {"documents": len(texts), "bytes": int(sizes.sum()), "tokens": float(tokens)}


def train_iterator(config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: str, *,
                   batch_size: int, seed: int, shard_index: int = 0,
                   shard_count: int = 1) -> PackedIterator:
  """Endless int32 ``[batch_size, config.seq_len]`` batches of this host's train documents
  (every ``shard_count``-th, from ``shard_index``), reshuffled each epoch; resumable through
  ``get_state()`` / ``set_state()``."""
  documents = pipeline.shard_documents(_split(config, data_dir, "train"), shard_index, shard_count)
  docs_tokens = pipeline.document_tokens(pipeline.epoch_shuffled(documents, seed), tokenizer)
  return PackedIterator(docs_tokens, batch_size=batch_size, seq_len=config.seq_len)


def heldout_batches(config: ml_collections.ConfigDict, tokenizer: Tokenizer, data_dir: str, *,
                    batch_size: int, num_batches: int) -> list[np.ndarray]:
  """Up to ``num_batches`` int32 ``[batch_size, config.seq_len]`` batches packed from the start of
  the held-out split (stored order); one smaller batch if the split is too small for a full one."""
  docs_tokens = pipeline.document_tokens(
      pipeline.shard_documents(_split(config, data_dir, "heldout")), tokenizer)
  rows = pipeline.packed_rows(docs_tokens, seq_len=config.seq_len,
                              num_rows=batch_size * num_batches)
  return pipeline.group_rows(rows, batch_size)


def heldout_documents(config: ml_collections.ConfigDict, data_dir: str) -> list[dict]:
  """All held-out examples ``{"text", "path"}`` in stored order."""
  return list(pipeline.shard_documents(_split(config, data_dir, "heldout")))
