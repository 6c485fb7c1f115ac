"""`evaluation.generation.generate_rows`: rows longest first through slots, in dispatches of one
shape, each row on its own random stream (whatever its dispatch, across resumes), every record
back under its own key."""
import hashlib

import jax
import numpy as np
import pytest

from asarm_jax import sampling
from asarm_jax.evaluation import generation
from tests import analytic_joint, sampling_cases
from tests.sampling_cases import LENGTH, NUM_SPECIAL, VOCAB

WIDTH, BATCH, PER_DISPATCH = 12, 3, 4


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
  its hidden count, and records each call's hidden counts, slots and row keys."""

  def __init__(self):
    self.batches, self.keys, self.slots = [], [], []

  def __call__(self, model, params, tokens, visible, rng, **kwargs):
    tokens, visible, length = map(np.asarray, (tokens, visible, kwargs["length_B"]))
    hidden = (~visible & (np.arange(WIDTH) < length[:, None])).sum(1)
    self.batches.append([int(h) for h in hidden])
    self.keys.append([tuple(k) for k in np.asarray(jax.random.key_data(rng)).tolist()])
    self.slots.append(kwargs["slots"])
    filled = np.where(visible, tokens, tokens[:, :1] * 1000 + hidden[:, None])
    return sampling.Generation(tokens_BxL=filled, num_calls_B=hidden, num_generated_B=hidden,
                               num_network_calls=np.int32(1),
                               rounds_by_size_BxS=np.zeros((len(filled), 0), np.int32))


def _generate(rows, path, per_dispatch=PER_DISPATCH):
  return generation.generate_rows(None, None, rows, str(path),
                                  spec=sampling.SamplerSpec("sequential"), batch_size=BATCH,
                                  seed=0, desc="test", rows_per_dispatch=per_dispatch)


@pytest.fixture
def fake(monkeypatch):
  fake = FakeGenerate()
  monkeypatch.setattr(sampling, "generate", fake)
  return fake


def test_rows_go_longest_first_in_equal_dispatches_under_their_keys(tmp_path, fake):
  counts = [5, 1, 9, 2, 5, 7, 1, 3, 4]
  rows = _rows(counts)
  records = _generate(rows, tmp_path / "cache.jsonl").records
  assert [len(b) for b in fake.batches] == [4, 4, 4]  # the last one padded
  assert fake.slots == [BATCH] * 3
  real = [h for batch in fake.batches for h in batch][:len(counts)]
  assert real == sorted(counts, reverse=True) and fake.batches[-1][1:] == [0, 0, 0]
  for i, (row, n) in enumerate(zip(rows, counts)):
    assert records[row.key]["hidden"] == [(100 + i) * 1000 + n] * n
    assert records[row.key]["num_calls"] == n


def _keys_by_row(fake) -> dict[int, tuple]:
  """Each generated row's key, by its hidden count (unique in these tests)."""
  return {h: key for batch, keys in zip(fake.batches, fake.keys)
          for h, key in zip(batch, keys) if h}


@pytest.mark.parametrize("num_rows, batch_size, size", [(1033, 64, 345), (1033, 1, 61),
                                                        (40, 4, 40), (64, 1, 64), (65, 1, 33)])
def test_dispatches_are_equal_and_hold_at_most_8_rows_a_slot(num_rows, batch_size, size):
  assert generation.dispatch_size(num_rows, batch_size) == size


def test_a_rows_key_depends_only_on_the_row(tmp_path, fake):
  rows = _rows([4, 3, 8, 2, 6, 1, 5, 7, 9, 10])
  path = tmp_path / "cache.jsonl"
  first = _generate(rows[:5], path)  # an interrupted run: half the rows are cached
  resumed = _generate(rows, path)
  assert len(fake.batches) == 2 + 2  # only the five new rows were generated
  assert (first.num_generated, resumed.num_generated) == (5, 5)
  assert all(resumed.records[key] == record for key, record in first.records.items())
  assert _generate(rows, path).num_generated == 0 and len(fake.batches) == 4
  keys = _keys_by_row(fake)
  _generate(rows, tmp_path / "other.jsonl", per_dispatch=10)  # all at once, other neighbours
  assert _keys_by_row(fake) == keys and len(set(keys.values())) == len(rows)


@pytest.mark.parametrize("base", [jax.random.key(7), jax.random.PRNGKey(7)],
                         ids=["typed", "raw"])
def test_a_rows_random_key_is_the_base_folded_with_its_keys_hash(base):
  """A row's stream is ``fold_in(fold_in(base, lo), hi)`` of its key's 64-bit BLAKE2b hash,
  both halves little-endian, whatever computes it."""
  row_keys = ("SingleLineInfilling/HumanEval/0/L0#0", "é", "x" * 300)
  got_N = generation.row_keys(base, row_keys)
  for row_key, got in zip(row_keys, got_N):
    digest = hashlib.blake2b(row_key.encode(), digest_size=8).digest()
    want = base
    for half in (digest[:4], digest[4:]):
      want = jax.random.fold_in(want, int.from_bytes(half, "little"))
    if jax.dtypes.issubdtype(got.dtype, jax.dtypes.prng_key):
      got, want = jax.random.key_data(got), jax.random.key_data(want)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_each_dispatch_is_made_before_the_previous_one_is_written(tmp_path, fake,
                                                                     monkeypatch):
  path = tmp_path / "cache.jsonl"
  written = []  # cache lines on disk when each dispatch is made

  def generate(*args, **kwargs):
    written.append(len(path.read_text().splitlines()) if path.exists() else 0)
    if len(written) == 3:
      raise KeyboardInterrupt  # the run is stopped while making its third dispatch
    return fake(*args, **kwargs)

  monkeypatch.setattr(sampling, "generate", generate)
  rows = _rows([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
  with pytest.raises(KeyboardInterrupt):
    _generate(rows, path)
  # Dispatch 1 is written only once dispatch 2 is in flight; dispatch 2 is generated again.
  assert written == [0, 0, PER_DISPATCH]
  assert len(generation.load_records(str(path))) == PER_DISPATCH
  monkeypatch.setattr(sampling, "generate", fake)
  records = _generate(rows, path).records
  assert len(fake.batches) == 2 + 2 and len(records) == len(rows)


def test_records_do_not_depend_on_slots_or_dispatches(tmp_path):
  """With the real sampler (on the analytic joint): the same records whatever the slots, the
  dispatch size and the rows beside each row."""
  net = analytic_joint.MixtureOfChains(LENGTH, VOCAB, NUM_SPECIAL)
  params = analytic_joint.random_params(0, LENGTH, VOCAB)
  tokens, visible, _, lengths = (x[::2000] for x in sampling_cases.batch(10_000))
  rows = [generation.Row(f"r{i}", tokens[i], visible[i], int(lengths[i]))
          for i in range(len(tokens))]
  spec = sampling.SamplerSpec("assd_fused", k=2)
  made = [generation.generate_rows(net, params, rows[::step], str(tmp_path / f"{i}.jsonl"),
                                   spec=spec, batch_size=slots, seed=5, desc="test",
                                   rows_per_dispatch=per_dispatch).records
          for i, (step, slots, per_dispatch) in enumerate([(1, 25, None), (1, 3, 8), (2, 1, 5)])]
  assert made[1] == made[0]
  assert made[2] == {row.key: made[0][row.key] for row in rows[::2]}
