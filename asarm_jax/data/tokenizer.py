"""SentencePiece tokenizer with fixed special ids that round-trips code whitespace exactly."""
from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

PAD_ID, UNK_ID, EOS_ID, MASK_ID = 0, 1, 2, 3
NUM_SPECIAL_TOKENS = 4
MASK_PIECE = "<mask>"
TRAIN_CHUNK_CHARS = 2048


def training_chunks(texts: Iterable[str], max_chars: int,
                    chunk_chars: int = TRAIN_CHUNK_CHARS) -> Iterator[str]:
  """Cuts documents into whole-line chunks of at most ``chunk_chars`` characters (newlines
  kept; longer lines are cut) and stops after ``max_chars`` characters in total."""
  total = 0
  for text in texts:
    buf = ""
    for line in text.splitlines(keepends=True):
      for start in range(0, len(line), chunk_chars):
        piece = line[start:start + chunk_chars]
        if len(buf) + len(piece) > chunk_chars:
          yield buf
          total += len(buf)
          if total >= max_chars:
            return
          buf = ""
        buf += piece
    if buf:
      yield buf
      total += len(buf)
      if total >= max_chars:
        return


class Tokenizer:
  """Byte-fallback BPE; ids ``[0, 4)`` are ``<pad>``, ``<unk>``, ``<eos>``, ``<mask>``; no BOS.

  ``decode(encode(text)) == text`` for any text without U+2581 (``▁``, SentencePiece's space).
  """

  pad_id = PAD_ID
  unk_id = UNK_ID
  eos_id = EOS_ID
  mask_id = MASK_ID
  num_special_tokens = NUM_SPECIAL_TOKENS

  def __init__(self, processor: spm.SentencePieceProcessor):
    self._sp = processor
    got = (processor.pad_id(), processor.unk_id(), processor.eos_id(), processor.bos_id(),
           processor.piece_to_id(MASK_PIECE))
    if got != (PAD_ID, UNK_ID, EOS_ID, -1, MASK_ID):
      raise ValueError(f"unexpected special ids (pad, unk, eos, bos, mask) = {got}")

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, path: str,
            max_chars: int = 5_000_000) -> Tokenizer:
    """Trains on the first ``max_chars`` characters of ``texts``; writes the model to ``path``."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=training_chunks(texts, max_chars),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=PAD_ID, unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1,
        control_symbols=[MASK_PIECE],
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=4 * TRAIN_CHUNK_CHARS,
        num_threads=os.cpu_count() or 1,
        minloglevel=2)
    tokenizer = cls.from_serialized(model.getvalue())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp_path = f"{path}.tmp{os.getpid()}"
    with open(tmp_path, "wb") as f:
      f.write(tokenizer.serialized())
    os.replace(tmp_path, path)
    return tokenizer

  @classmethod
  def load(cls, path: str) -> Tokenizer:
    with open(path, "rb") as f:
      return cls.from_serialized(f.read())

  @classmethod
  def from_serialized(cls, model_proto: bytes) -> Tokenizer:
    return cls(spm.SentencePieceProcessor(model_proto=model_proto))

  def serialized(self) -> bytes:
    """The model proto, as written by :meth:`train`."""
    return self._sp.serialized_model_proto()

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text``; never special ids (bytes stand in for unknown characters)."""
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids`` with special ids ``[0, 4)`` dropped."""
    return self._sp.decode([int(i) for i in ids if i >= NUM_SPECIAL_TOKENS])
