"""Infilling prompts as text: ``<mask:N>`` marks ``N`` hidden slots.

``"def f(x):<mask:8>return y"`` is the prompt ``def f(x):`` and ``return y`` with eight
tokens to generate between them. Text pieces are tokenized separately (so a subword tokenizer
cannot merge across a span). ``tokenizer`` is any object with ``encode(str) -> list[int]``,
``decode(list[int]) -> str`` and ``mask_id``.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from absl import logging

from asarm_jax.sampling import core
from asarm_jax.sampling.spec import SamplerSpec

_OPEN = "<mask:"
_COUNT = re.compile(r"[0-9]+")


class PromptError(ValueError):
  """A prompt that cannot be sampled (malformed ``<mask:N>`` span, longer than the context,
  token ids outside the vocabulary); the message is one line."""


def _pieces(text: str) -> list[str | int]:
  """Splits ``text`` into text pieces (str) and mask spans (their size N, int)."""
  first, *rest = text.split(_OPEN)
  pieces: list[str | int] = [first]
  for part in rest:
    close = part.find(">")
    if close < 0:
      raise PromptError(f"unclosed {(_OPEN + part)[:24]!r}: expected '<mask:N>'.")
    count = part[:close]
    if not _COUNT.fullmatch(count):
      raise PromptError(f"malformed {_OPEN + count + '>'!r}: N must be a positive integer.")
    if int(count) <= 0:
      raise PromptError(f"malformed {_OPEN + count + '>'!r}: N must be at least 1.")
    pieces += [int(count), part[close + 1:]]
  return pieces


def parse(text: str, tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
  """Tokens (``int32[L]``, ``mask_id`` at hidden slots) and ``visible`` (``bool[L]``)."""
  tokens: list[int] = []
  visible: list[bool] = []
  for piece in _pieces(text):
    ids = [tokenizer.mask_id] * piece if isinstance(piece, int) else (
        tokenizer.encode(piece) if piece else [])
    tokens += ids
    visible += [not isinstance(piece, int)] * len(ids)
  return np.asarray(tokens, np.int32), np.asarray(visible, np.bool_)


def render(tokens: np.ndarray, visible: np.ndarray, tokenizer: Any) -> str:
  """Inverse of :func:`parse`: visible runs decoded, each hidden run written ``<mask:N>``."""
  tokens, visible = np.asarray(tokens), np.asarray(visible, bool)
  out, start = [], 0
  for end in range(1, len(tokens) + 1):
    if end == len(tokens) or visible[end] != visible[start]:
      run = tokens[start:end]
      out.append(tokenizer.decode([int(t) for t in run]) if visible[start]
                 else f"{_OPEN}{len(run)}>")
      start = end
  return "".join(out)


def encode_batch(texts: list[str], tokenizer: Any, *, vocab_size: int, max_len: int,
                 length: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Parses ``texts`` and pads them to ``length`` (default: the longest prompt).

  Returns ``tokens_BxL`` (int32, ``tokenizer.pad_id`` or 0 after each prompt), ``visible_BxL``
  (bool) and ``length_B`` (int32, each prompt's size). Raises :class:`PromptError` for a
  malformed span, a prompt longer than ``length`` or than the model's context ``max_len``, and
  token ids outside ``[0, vocab_size)`` (a tokenizer that does not match the model).
  """
  parsed = [parse(text, tokenizer) for text in texts]
  sizes = [len(tokens) for tokens, _ in parsed]
  length = max(sizes, default=0) if length is None else length
  for b, size in enumerate(sizes):
    if size > max_len:
      raise PromptError(f"prompt {b} has {size} tokens (text plus <mask:N> slots); the model "
                        f"context holds {max_len}.")
    if size > length:
      raise PromptError(f"prompt {b} has {size} tokens (text plus <mask:N> slots); "
                        f"length={length}.")
  if length > max_len:
    raise PromptError(f"length={length} exceeds the model context of {max_len} tokens.")
  for b, (tokens, _) in enumerate(parsed):
    bad = tokens[(tokens < 0) | (tokens >= vocab_size)]
    if bad.size:
      raise PromptError(f"prompt {b} has token id {int(bad[0])} outside the model vocabulary "
                        f"[0, {vocab_size}): tokenizer and model do not match.")
  pad = getattr(tokenizer, "pad_id", 0)
  tokens_BxL = np.full((len(texts), length), pad, np.int32)
  visible_BxL = np.zeros((len(texts), length), np.bool_)
  for b, (tokens, visible) in enumerate(parsed):
    tokens_BxL[b, :len(tokens)], visible_BxL[b, :len(visible)] = tokens, visible
  return tokens_BxL, visible_BxL, np.asarray(sizes, np.int32)


def sample_text(model: Any, params: Any, tokenizer: Any, texts: list[str], rng: jax.Array, *,
                spec: SamplerSpec | None = None, length: int | None = None,
                **loose: Any) -> list[dict[str, Any]]:
  """Fills the ``<mask:N>`` spans of every prompt in one :func:`core.generate` call.

  The sampler is ``spec``, or :func:`core.generate`'s loose keywords (``method``, ``k``, ...).

  Prompts are checked and padded by :func:`encode_batch` (``length`` defaults to the longest),
  so prompts of different sizes share one compiled loop. A prompt without a span is returned
  unchanged with 0 calls (and a warning); one that is all spans is generated unconditionally.
  Returns per prompt ``{"text", "num_calls", "num_generated", "tokens_per_call"}``.
  """
  tokens_BxL, visible_BxL, length_B = encode_batch(
      texts, tokenizer, vocab_size=model.vocab_size, max_len=model.max_len, length=length)
  positions_BxL = np.arange(tokens_BxL.shape[1])
  hidden_B = (~visible_BxL & (positions_BxL < length_B[:, None])).sum(1)
  for b in np.flatnonzero(hidden_B == 0):
    logging.warning("prompt %d has no <mask:N> span: nothing to generate, returned unchanged.", b)
  filled_BxL, calls_B, generated_B = tokens_BxL, hidden_B, hidden_B  # all zero if nothing hidden
  if hidden_B.any():
    out = core.generate(model, params, tokens_BxL, visible_BxL, rng, spec=spec,
                        length_B=length_B, **loose)
    filled_BxL, calls_B, generated_B = (np.asarray(x) for x in (
        out.tokens_BxL, out.num_calls_B, out.num_generated_B))
  results = []
  for b, size in enumerate(length_B):
    calls, generated = int(calls_B[b]), int(generated_B[b])
    text = (tokenizer.decode([int(t) for t in filled_BxL[b, :size]]) if hidden_B[b]
            else texts[b])
    results.append({"text": text, "num_calls": calls, "num_generated": generated,
                    "tokens_per_call": generated / calls if calls else 0.0})
  return results
