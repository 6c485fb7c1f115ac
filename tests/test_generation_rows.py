"""Batching of `evaluation.generation.generate_rows`: by hidden count, with a fresh random stream
per batch across resumes, and every record back under its own key."""
import hashlib

import jax
import numpy as np
import pytest

from asarm_jax import sampling
from asarm_jax.evaluation import generation

WIDTH, BATCH = 12, 3


def _rows(num_hidden):
  """One row per entry: positions [1, 1 + n) hidden, the rest of ``WIDTH`` visible; token
  values encode the row index, so a filled row says whose it is."""
  rows = []
  for i, n in enumerate(num_hidden):
    tokens = np.full((WIDTH,), 100 + i, np.int32)
    visible = np.ones((WIDTH,), bool)
    visible[1:1 + n] = False
    rows.append(generation.Row(f"task{i}#0", tokens, visible, WIDTH))
  return rows


class FakeGenerate:
  """Stands in for `sampling.generate`: fills hidden slots with the row's own visible token and
  its hidden count, and records each call's hidden counts and random key."""

  def __init__(self):
    self.batches, self.keys = [], []

  def __call__(self, model, params, tokens, visible, rng, **kwargs):
    tokens, visible, length = map(np.asarray, (tokens, visible, kwargs["length_B"]))
    hidden = (~visible & (np.arange(WIDTH) < length[:, None])).sum(1)
    self.batches.append([int(h) for h in hidden])
    self.keys.append(tuple(np.asarray(jax.random.key_data(rng)).tolist()))
    filled = np.where(visible, tokens, tokens[:, :1] * 1000 + hidden[:, None])
    return sampling.Generation(tokens_BxL=filled, num_calls_B=hidden, num_generated_B=hidden,
                               num_network_calls=np.int32(1))


def _generate(rows, path):
  return generation.generate_rows(None, None, rows, str(path),
                                  spec=sampling.SamplerSpec("sequential"), batch_size=BATCH,
                                  seed=0, desc="test")


@pytest.fixture
def fake(monkeypatch):
  fake = FakeGenerate()
  monkeypatch.setattr(sampling, "generate", fake)
  return fake


def test_rows_are_batched_by_hidden_count_and_recorded_under_their_keys(tmp_path, fake):
  counts = [5, 1, 9, 2, 5, 7, 1, 3]
  rows = _rows(counts)
  records = _generate(rows, tmp_path / "cache.jsonl").records
  real = [[h for h in batch if h] for batch in fake.batches]  # padding rows hide nothing
  assert [h for batch in real for h in batch] == sorted(counts)
  assert all(max(a) <= min(b) for a, b in zip(real, real[1:]))
  for i, (row, n) in enumerate(zip(rows, counts)):
    assert records[row.key]["hidden"] == [(100 + i) * 1000 + n] * n
    assert records[row.key]["num_calls"] == n


def test_a_resumed_run_draws_no_batch_key_twice(tmp_path, fake):
  rows = _rows([4, 3, 8, 2, 6, 1, 5, 7, 2, 3])
  path = tmp_path / "cache.jsonl"
  first = _generate(rows[:5], path)  # an interrupted run: half the rows are cached
  resumed = _generate(rows, path)
  assert len(fake.batches) == 2 + 2  # only the five new rows were generated
  assert (first.num_generated, resumed.num_generated) == (5, 5)
  assert len(set(fake.keys)) == len(fake.keys)
  assert all(resumed.records[key] == record for key, record in first.records.items())
  assert _generate(rows, path).num_generated == 0 and len(fake.batches) == 4


@pytest.mark.parametrize("base", [jax.random.key(7), jax.random.PRNGKey(7)],
                         ids=["typed", "raw"])
def test_a_batch_key_is_the_base_folded_with_its_rows_hash(base):
  """Caches written by earlier versions resume on the same random streams: the key is
  ``fold_in(fold_in(base, lo), hi)`` of the first row key's 64-bit BLAKE2b hash, both halves
  little-endian, whatever computes it."""
  for row_key in ("SingleLineInfilling/HumanEval/0/L0#0", "é", "x" * 300):
    digest = hashlib.blake2b(row_key.encode(), digest_size=8).digest()
    want = base
    for half in (digest[:4], digest[4:]):
      want = jax.random.fold_in(want, int.from_bytes(half, "little"))
    got = generation.batch_key(base, row_key)
    if jax.dtypes.issubdtype(got.dtype, jax.dtypes.prng_key):
      got, want = jax.random.key_data(got), jax.random.key_data(want)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_each_batch_is_dispatched_before_the_previous_one_is_written(tmp_path, fake,
                                                                     monkeypatch):
  path = tmp_path / "cache.jsonl"
  written = []  # cache lines on disk when each batch is dispatched

  def generate(*args, **kwargs):
    written.append(len(path.read_text().splitlines()) if path.exists() else 0)
    if len(written) == 3:
      raise KeyboardInterrupt  # the run is stopped while dispatching its third batch
    return fake(*args, **kwargs)

  monkeypatch.setattr(sampling, "generate", generate)
  rows = _rows([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
  with pytest.raises(KeyboardInterrupt):
    _generate(rows, path)
  assert written == [0, 0, BATCH]  # batch 1 is written only once batch 2 is in flight
  assert len(generation.load_records(str(path))) == BATCH  # batch 2 is generated again
  monkeypatch.setattr(sampling, "generate", fake)
  records = _generate(rows, path).records
  assert len(fake.batches) == 2 + 3 and len(records) == len(rows)
