"""Data: local tfds builders (array_record), packing, resumable state and host sharding."""
import glob
import itertools
import json
import logging
import os
import sysconfig

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_module

import asarm_jax.data as data
from asarm_jax.data import builders, pipeline

tfds.disable_progress_bar()
STDLIB = sysconfig.get_paths()["stdlib"]
NUM_PY = 36


def _write(path, content):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(content if isinstance(content, bytes) else content.encode("utf-8"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """``NUM_PY`` kept .py files (slices of real stdlib modules) plus files every builder skips."""
  root = str(tmp_path_factory.mktemp("corpus"))
  modules = sorted(n for n in os.listdir(STDLIB) if n.endswith(".py"))[:NUM_PY]
  expected = {}
  for i, name in enumerate(modules):
    with open(os.path.join(STDLIB, name), encoding="utf-8") as f:
      text = f"# doc {i}\n" + "".join(f.readlines()[:60])
    rel = f"pkg{i % 3}/sub/{name}" if i % 2 else name
    _write(os.path.join(root, rel), text)
    expected[rel] = text
  _write(os.path.join(root, "pkg0/tests/test_x.py"), "x = 1\n")        # test dir
  _write(os.path.join(root, "__pycache__/m.py"), "x = 1\n")            # cache dir
  _write(os.path.join(root, "bad.py"), b"x = '\xff\xfe'\n")            # not UTF-8
  _write(os.path.join(root, "big.py"), "#" * (builders.MAX_FILE_BYTES + 1))
  _write(os.path.join(root, "empty.py"), "")
  for i in range(12):
    _write(os.path.join(root, "notes", f"n{i}.{['txt', 'md', 'rst'][i % 3]}"),
           f"Note {i}.\n\n  Indented *prose* line {i}.\n")
  return root, expected


def _config(root, **overrides):
  config = data.default_data_config()
  config.source_dirs = [root]
  config.heldout_fraction = 0.25
  config.vocab_size = 400
  config.seq_len = 64
  config.tokenizer_max_chars = 200_000
  config.update(overrides)
  return config


def _rows(builder, split):
  """Every row of ``split`` read through ``as_data_source``, checked against the record count
  of the array_record files themselves."""
  files = glob.glob(os.path.join(builder.data_dir, f"{builder.name}-{split}.array_record-*"))
  assert files
  num_records = 0
  for path in files:
    reader = array_record_module.ArrayRecordReader(path)
    num_records += reader.num_records()
    reader.close()
  source = builder.as_data_source(split)
  assert len(source) == num_records == builder.info.splits[split].num_examples
  return [{k: v.decode("utf-8") for k, v in source[i].items()} for i in range(num_records)]


def test_python_code_builder_splits_by_path_hash(corpus, tmp_path):
  root, expected = corpus
  builder = builders.build("python_code", str(tmp_path), source_dirs=[root], heldout_fraction=0.25)
  train, heldout = _rows(builder, "train"), _rows(builder, "heldout")
  train_paths, heldout_paths = {r["path"] for r in train}, {r["path"] for r in heldout}
  assert len(train_paths) == len(train) and len(heldout_paths) == len(heldout)
  assert not train_paths & heldout_paths
  assert train_paths | heldout_paths == set(expected)
  assert heldout_paths == {p for p in expected if builders.path_unit_hash(p) < 0.25}
  assert 0 < len(heldout) < len(train)
  assert all(r["text"] == expected[r["path"]] for r in train + heldout)


def test_empty_data_dir_is_refused(corpus, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match="data_dir is empty"):
    builders.build("python_code", "", source_dirs=[corpus[0]])
  assert not list(tmp_path.iterdir())


def test_builder_is_idempotent_and_options_change_the_config(corpus, tmp_path, monkeypatch):
  root, expected = corpus
  first = builders.build("python_code", str(tmp_path), source_dirs=[root], heldout_fraction=0.25)
  monkeypatch.setattr(builders.FolderBuilder, "_split_generators",
                      lambda *a: pytest.fail("rebuilt an existing dataset"))
  again = builders.build("python_code", str(tmp_path), source_dirs=[root], heldout_fraction=0.25)
  assert again.data_dir == first.data_dir
  monkeypatch.undo()
  other = builders.build("python_code", str(tmp_path / "other"), source_dirs=[root],
                         heldout_fraction=0.25)
  heldout_paths = {r["path"] for r in _rows(first, "heldout")}
  assert {r["path"] for r in _rows(other, "heldout")} == heldout_paths
  small = builders.build("python_code", str(tmp_path), source_dirs=[root], heldout_fraction=0.25,
                         max_files=10)
  assert small.builder_config.name != first.builder_config.name
  assert len(_rows(small, "train")) + len(_rows(small, "heldout")) == 10
  excluded = builders.build("python_code", str(tmp_path), source_dirs=[root],
                            heldout_fraction=0.25, exclude_patterns=["pkg*/sub/*"])
  paths = {r["path"] for s in ("train", "heldout") for r in _rows(excluded, s)}
  assert paths == {p for p in expected if not p.startswith("pkg")}


def test_max_files_sample_keeps_the_heldout_fraction(tmp_path):
  # 100 of 400 files at heldout_fraction 0.25: the held-out count is Binomial(100, 0.25), mean 25
  # and sd 4.3, so [8, 42] is 4 sd. A sample that shared the split's hash (the 100 smallest
  # hashes, all below ~0.25) would be all held out and have no train split.
  root = tmp_path / "src"
  root.mkdir()
  for i in range(400):
    (root / f"m{i:03d}.py").write_text(f"x = {i}\n")
  builder = builders.build("python_code", str(tmp_path / "data"), source_dirs=[str(root)],
                           heldout_fraction=0.25, max_files=100)
  train, heldout = _rows(builder, "train"), _rows(builder, "heldout")
  assert len(train) + len(heldout) == 100
  assert 8 <= len(heldout) <= 42, len(heldout)
  assert all(builders.path_unit_hash(r["path"]) < 0.25 for r in heldout)
  assert all(builders.path_unit_hash(r["path"]) >= 0.25 for r in train)


def test_text_files_builder(corpus, tmp_path):
  root, _ = corpus
  builder = builders.build("text_files", str(tmp_path), source_dirs=[os.path.join(root, "notes")],
                           heldout_fraction=0.3)
  rows = _rows(builder, "train") + _rows(builder, "heldout")
  assert sorted(r["path"] for r in rows) == sorted(
      f"n{i}.{['txt', 'md', 'rst'][i % 3]}" for i in range(12))
  with pytest.raises(ValueError, match="source_dirs"):
    builders.build("text_files", str(tmp_path))
  with pytest.raises(ValueError, match="no heldout files"):  # tfds cannot write empty splits
    builders.build("text_files", str(tmp_path), source_dirs=[root], heldout_fraction=1e-9)


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
  root, _ = corpus
  data_dir = str(tmp_path_factory.mktemp("data"))
  config = _config(root)
  return config, data.prepare(config, data_dir), data_dir


def _train_paths_by_tokens(config, tokenizer, data_dir):
  builder = builders.build("python_code", data_dir, source_dirs=config.source_dirs,
                           heldout_fraction=config.heldout_fraction)
  return {tuple(tokenizer.encode(r["text"])): r["path"] for r in _rows(builder, "train")}


def _documents(batches, eos_id):
  """The documents of the stream in document order (without their ``<eos>``): row ``b`` of
  every batch continues its own stream of documents ``b, b + B, ...``; the order is rebuilt by
  interleaving the rows' whole documents, as far as every row has one."""
  rows_NxBxL = np.stack(batches)
  per_row = []
  for row in range(rows_NxBxL.shape[1]):
    stream = rows_NxBxL[:, row].reshape(-1).tolist()
    ends = [i for i, t in enumerate(stream) if t == eos_id]
    per_row.append([tuple(stream[a + 1:b]) for a, b in zip([-1] + ends, ends)])
  count = min(map(len, per_row))
  return [per_row[i % len(per_row)][i // len(per_row)] for i in range(count * len(per_row))]


def test_prepare_is_idempotent(prepared, monkeypatch):
  config, tokenizer, data_dir = prepared
  assert tokenizer.vocab_size == config.vocab_size
  monkeypatch.setattr(data.Tokenizer, "train", lambda *a, **k: pytest.fail("retrained"))
  assert data.prepare(config, data_dir).serialized() == tokenizer.serialized()
  assert len(glob.glob(os.path.join(data_dir, "**", "tokenizer.model"), recursive=True)) == 1


def test_train_batches_are_packed_documents_with_eos(prepared):
  config, tokenizer, data_dir = prepared
  by_tokens = _train_paths_by_tokens(config, tokenizer, data_dir)
  num_train_tokens = sum(len(t) + 1 for t in by_tokens)
  it = data.train_iterator(config, tokenizer, data_dir, batch_size=4, seed=0)
  num_batches = 4 * num_train_tokens // (4 * config.seq_len) + 2  # every row past two epochs
  batches = [next(it) for _ in range(num_batches)]
  assert all(b.shape == (4, config.seq_len) and b.dtype == np.int32 for b in batches)
  docs = _documents(batches, tokenizer.eos_id)
  assert all(d in by_tokens for d in docs)  # whole documents, the first one included
  n = len(by_tokens)
  assert len(docs) >= 2 * n
  epochs = [docs[:n], docs[n:2 * n]]
  assert all(sorted(e) == sorted(by_tokens) for e in epochs)  # each document once per epoch
  assert epochs[0] != epochs[1]  # reshuffled
  other = next(data.train_iterator(config, tokenizer, data_dir, batch_size=4, seed=1))
  assert not np.array_equal(other, batches[0])


def test_state_restores_identical_batches(prepared):
  config, tokenizer, data_dir = prepared
  it = data.train_iterator(config, tokenizer, data_dir, batch_size=3, seed=7)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  assert min(state["token_offset"]) > 0  # every row resumes mid-document
  expected = [next(it) for _ in range(40)]  # crosses an epoch boundary
  fresh = data.train_iterator(config, tokenizer, data_dir, batch_size=3, seed=7)
  fresh.set_state(state)
  assert all(np.array_equal(a, b) for a, b in zip(expected, (next(fresh) for _ in range(40))))


def test_a_long_document_fills_one_row_not_whole_batches():
  # Document 0 is 40 rows long, the others one row or less: with plain packing it would fill
  # the first 10 batches of 4 rows; in row streams it is row 0's only, and the other rows keep
  # bringing new documents.
  seq_len, batch = 8, 4
  long_doc = np.full(40 * seq_len, 7, np.int32)
  short = [np.arange(100 + 10 * i, 100 + 10 * i + 1 + i % seq_len, dtype=np.int32)
           for i in range(1, 200)]
  docs = grain.MapDataset.source([long_doc] + short)
  batches = list(itertools.islice(pipeline.PackedIterator(docs, batch_size=batch,
                                                          seq_len=seq_len), 10))
  for b in batches:
    assert (b[0] == 7).all() and not (b[1:] == 7).any()
  firsts = {int(t) // 10 * 10 for b in batches for t in b[1:].reshape(-1)}
  assert len(firsts) > 3 * 10  # the other rows saw dozens of documents
  # A position of another row count (here a single stream's, as written before row streams)
  # restarts every row at its earliest unfinished document.
  it = pipeline.PackedIterator(docs, batch_size=batch, seq_len=seq_len)
  it.set_state({"doc_index": 5, "token_offset": 1})
  assert it.get_state() == {"doc_index": [5, 6, 7, 8], "token_offset": [0, 0, 0, 0]}
  assert [int(b[0]) for b in next(it)] == [int(docs[5 + row][0]) for row in range(batch)]


def test_shards_read_disjoint_documents(prepared):
  config, tokenizer, data_dir = prepared
  by_tokens = _train_paths_by_tokens(config, tokenizer, data_dir)
  num_batches = 2 * sum(len(t) + 1 for t in by_tokens) // (2 * config.seq_len) + 2  # > an epoch
  seen = []
  for shard in range(2):
    it = data.train_iterator(config, tokenizer, data_dir, batch_size=2, seed=0, shard_index=shard,
                             shard_count=2)
    seen.append({by_tokens[d] for d in _documents([next(it) for _ in range(num_batches)],
                                                  tokenizer.eos_id)})
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(by_tokens.values())


def test_heldout(prepared):
  config, tokenizer, data_dir = prepared
  documents = data.heldout_documents(config, data_dir)
  assert documents and all(builders.path_unit_hash(d["path"]) < 0.25 for d in documents)
  batches = data.heldout_batches(config, tokenizer, data_dir, batch_size=2, num_batches=3)
  assert 1 <= len(batches) <= 3
  assert all(b.shape == (2, config.seq_len) and b.dtype == np.int32 for b in batches)
  again = data.heldout_batches(config, tokenizer, data_dir, batch_size=2, num_batches=3)
  assert all(np.array_equal(a, b) for a, b in zip(batches, again))
  stream = [t for d in documents for t in tokenizer.encode(d["text"]) + [tokenizer.eos_id]]
  assert np.concatenate(batches).reshape(-1).tolist() == stream[:len(batches) * 2 * config.seq_len]
  tiny = data.heldout_batches(config, tokenizer, data_dir, batch_size=10**6, num_batches=1)
  assert len(tiny) == 1 and 1 <= tiny[0].shape[0] < 10**6


def test_skipped_files_are_counted_and_named(corpus, tmp_path, caplog):
  """Files that are not UTF-8, blank or too big are skipped with one warning that counts and
  names them; a folder with nothing usable is refused with the reasons."""
  root, expected = corpus
  with caplog.at_level(logging.WARNING):
    builders.build("python_code", str(tmp_path), source_dirs=[root], heldout_fraction=0.25)
  assert (f"python_code: skipped 3 of {len(expected) + 3} files, kept {len(expected)}: "
          "1 blank (empty.py), 1 not UTF-8 (bad.py), 1 over 1 MiB (big.py).") in caplog.text
  bad = tmp_path / "bad"
  for i in range(4):
    _write(str(bad / f"latin{i}.py"), b"s = '\xe9'\n")
  with pytest.raises(ValueError, match=r"python_code: no usable file with suffix \('.py',\) in "
                                       r"\('.*/bad',\): 4 found, all skipped: 4 not UTF-8 "
                                       r"\(latin[0-3].py, latin[0-3].py, latin[0-3].py, \.\.\.\)$"):
    builders.build("python_code", str(tmp_path / "data"), source_dirs=[str(bad)])


def test_corpus_size_counts_the_train_split(prepared):
  """Documents and bytes are counted; tokens (one ``<eos>`` each) are exact when the sample of
  documents whose bytes per token scale the estimate covers them all."""
  config, tokenizer, data_dir = prepared
  texts = [doc["text"] for doc in pipeline.shard_documents(
      builders.build("python_code", data_dir, source_dirs=config.source_dirs,
                     heldout_fraction=config.heldout_fraction).as_data_source("train"))]
  exact = data.corpus_size(config, tokenizer, data_dir, sample=len(texts))
  assert exact["documents"] == len(texts)
  assert exact["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
  assert exact["tokens"] == sum(len(tokenizer.encode(t)) + 1 for t in texts)
