"""Tokenizer: exact round trip of real code (whitespace, tabs, unicode) and fixed special ids."""
import io
import os
import sysconfig

import pytest
import sentencepiece as spm

from asarm_jax.data.tokenizer import Tokenizer

STDLIB = sysconfig.get_paths()["stdlib"]
ROUND_TRIP_FILES = ["textwrap.py", "json/decoder.py", "encodings/punycode.py", "heapq.py",
                    "sqlite3/dbapi2.py"]


def _read(rel):
  with open(os.path.join(STDLIB, rel), encoding="utf-8", newline="") as f:
    return f.read()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  names = sorted(n for n in os.listdir(STDLIB) if n.endswith(".py") and n not in ROUND_TRIP_FILES)
  path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
  return Tokenizer.train((_read(n) for n in names), vocab_size=800, path=path,
                         max_chars=1_000_000)


def test_special_ids_and_vocab(tokenizer):
  assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.eos_id, tokenizer.mask_id) == (0, 1, 2, 3)
  assert tokenizer.num_special_tokens == 4
  assert tokenizer.vocab_size == 800
  literal = "<pad> <unk> </s> <s> <mask> <eos>"
  ids = tokenizer.encode(literal)
  assert min(ids) >= tokenizer.num_special_tokens
  assert tokenizer.decode(ids) == literal


@pytest.mark.parametrize("rel", ROUND_TRIP_FILES)
def test_round_trip_real_files(tokenizer, rel):
  text = _read(rel)
  ids = tokenizer.encode(text)
  assert min(ids) >= tokenizer.num_special_tokens  # never <mask>, <unk>, ...
  assert max(ids) < tokenizer.vocab_size
  assert tokenizer.decode(ids) == text
  assert len(ids) < len(text.encode("utf-8")) / 1.5  # merges are learned, not just bytes


def test_round_trip_tabs_crlf_and_odd_whitespace(tokenizer):
  text = _read("textwrap.py")
  variants = [
      text.replace("    ", "\t"),
      text.replace("\n", "\r\n"),
      "  leading spaces\n\n\n\n\ttab\t\tinner  \t  mix   \ntrailing   \n \n\t\n",
      "\n", "   ", "", "\t", "x\n",
      "unicode: é ß ﬁ Ａ Å 中文 𝔘 😀 e\u0301 \u200b\u00a0nbsp\x0c\x0b\x00 end",
  ]
  for variant in variants:
    assert tokenizer.decode(tokenizer.encode(variant)) == variant, repr(variant[:80])


def test_concatenated_encodings_decode_to_concatenated_text(tokenizer):
  text = _read("textwrap.py")
  mid_indent, mid_word = text.index("\n        ") + 3, text.index("def ") + 2
  cuts = sorted({0, 1, mid_indent, mid_word, mid_word + 1, len(text) // 2, len(text)})
  ids = [i for a, b in zip(cuts, cuts[1:]) for i in tokenizer.encode(text[a:b])]
  assert tokenizer.decode(ids) == text


def test_decode_drops_special_ids_only(tokenizer):
  ids = tokenizer.encode("def f(x):\n    return x\n")
  noisy = [0, 3] + ids[:3] + [2, 1, 3] + ids[3:] + [2, 0]
  assert tokenizer.decode(noisy) == "def f(x):\n    return x\n"
  assert tokenizer.decode([0, 1, 2, 3]) == ""


def test_save_load_serialize(tokenizer, tmp_path):
  text = _read("json/decoder.py")
  path = str(tmp_path / "sub" / "tok.model")
  trained = Tokenizer.train([_read("textwrap.py")], vocab_size=400, path=path)
  loaded = Tokenizer.load(path)
  assert loaded.serialized() == trained.serialized()
  assert loaded.encode(text) == trained.encode(text)
  clone = Tokenizer.from_serialized(tokenizer.serialized())
  assert clone.encode(text) == tokenizer.encode(text)


def test_rejects_model_with_other_special_ids():
  out = io.BytesIO()  # SentencePiece defaults: unk=0, bos=1, eos=2, no pad, no <mask>.
  spm.SentencePieceTrainer.train(sentence_iterator=iter([_read("textwrap.py")[:4000]]),
                                 model_writer=out, vocab_size=200, minloglevel=2)
  with pytest.raises(ValueError, match="special ids"):
    Tokenizer.from_serialized(out.getvalue())
