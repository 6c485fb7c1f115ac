"""Continuous batching (``generate(..., slots=S)``): a row's sample depends only on the row and
its key, never on the number of slots, its slot or its neighbours.

Rows of every prompt group (orders, infilling, padding) plus an all-visible row and a row with
one hidden position are decoded three ways with the same keys: all at once, through 4 (or 3)
slots refilled 3 (or 2) rows at a time (one prefill call), and each alone; tokens, call counts,
generated counts and auto's size counts must be identical. A row at a time is the refill of
one slot, and of the test that counts a refill's calls. Every method at T = 1, 0.5 and 0 runs on the analytic joint (with the cache; without
it for the methods whose uncached calls differ); the real network (whose KV cache a refilled
slot overwrites) runs the three methods with the most state in their carry.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

from asarm_jax import inference, models, sampling
from tests import analytic_joint
from tests.helpers import CharTokenizer, model_config
from tests.sampling_cases import LENGTH, NUM_SPECIAL, VOCAB, batch

NET = analytic_joint.MixtureOfChains(LENGTH, VOCAB, NUM_SPECIAL)
PARAMS = analytic_joint.random_params(0, LENGTH, VOCAB)
METHODS = {  # name: generate() keywords
    "sequential": dict(method="sequential"),
    "assd": dict(method="assd", k=3),
    "assd_fused": dict(method="assd_fused", k=3),
    "tree": dict(method="tree", k=4, depth=2, ngram=1),
    "auto": dict(method="auto", k=3),
    "mdlm": dict(method="mdlm", k=2),  # not exact, but a row is still its own
}


def _rows():
  """Two rows of every group, an all-visible row and a row with one hidden position."""
  tokens, visible, order, lengths = (x[::5000] for x in batch(rows_per_group=10_000))
  extra_visible = np.ones((2, LENGTH), bool)
  extra_visible[1, 3] = False
  tokens = np.concatenate([tokens, np.full((2, LENGTH), NUM_SPECIAL + 1, np.int32)])
  return (tokens, np.concatenate([visible, extra_visible]),
          np.concatenate([order, np.zeros((2, LENGTH), np.float32)]),
          np.concatenate([lengths, np.full(2, LENGTH, np.int32)]))


def _three_ways(net, params, slots: int, temperature: float, cache: bool, keywords: dict):
  """``generate`` of all rows at once, through ``slots`` slots refilled ``slots - 1`` rows at a
  time, and row by row (numpy)."""
  tokens, visible, order, lengths = _rows()
  rng = jax.random.key(3)
  run = lambda rows, key, **extra: jax.tree.map(np.asarray, sampling.generate(
      net, params, tokens[rows], visible[rows], key, order_BxL=order[rows],
      length_B=lengths[rows], temperature=temperature, cache=cache, **keywords, **extra))
  together = run(slice(None), rng)
  through_slots = run(slice(None), rng, slots=slots, refill=slots - 1)
  alone = [run(slice(i, i + 1), jax.random.fold_in(rng, i)[None]) for i in range(len(tokens))]
  return together, through_slots, alone


def _assert_same(together, through_slots, alone) -> None:
  for name in ("tokens_BxL", "num_calls_B", "num_generated_B", "rounds_by_size_BxS"):
    np.testing.assert_array_equal(getattr(through_slots, name), getattr(together, name), name)
    np.testing.assert_array_equal(np.concatenate([getattr(a, name) for a in alone]),
                                  getattr(together, name), name)


# Every method with the cache (a refilled slot's cache rows are overwritten); without it, the
# methods whose uncached calls differ in kind (mdlm never caches).
CASES = [(method, True) for method in METHODS if method != "mdlm"] + [
    ("sequential", False), ("tree", False), ("mdlm", False)]


@pytest.mark.parametrize("method, cache", CASES,
                         ids=[f"{m}-{'cache' if c else 'nocache'}" for m, c in CASES])
def test_rows_do_not_depend_on_slots_or_neighbours(method, cache):
  for temperature in (1.0, 0.5, 0.0):
    _assert_same(*_three_ways(NET, PARAMS, 4, temperature, cache, METHODS[method]))


@pytest.mark.parametrize("method", ["assd_fused", "tree", "auto"])
def test_rows_do_not_depend_on_slots_on_the_network(method):
  model = models.build(model_config(vocab_size=VOCAB + NUM_SPECIAL, num_layers=2, d_model=32,
                                    num_heads=2, d_ff=64, num_special_tokens=NUM_SPECIAL,
                                    max_len=LENGTH))
  params = model.init(jax.random.key(0), *models.example_inputs(1, LENGTH, 2))
  _assert_same(*_three_ways(model, params, 3, 1.0, True, METHODS[method]))


def test_every_row_is_decoded_and_calls_are_counted():
  """With fewer slots than rows the loop still fills every row, and the batch's call count is
  the first prefill, one prefill per refilled slot, and the rounds' calls."""
  tokens, visible, order, lengths = _rows()
  out = sampling.generate(NET, PARAMS, tokens, visible, jax.random.key(0), method="sequential",
                          order_BxL=order, length_B=lengths, slots=1)
  real_hidden = (~visible & (np.arange(LENGTH) < lengths[:, None])).sum(-1)
  np.testing.assert_array_equal(out.num_generated_B, real_hidden)
  np.testing.assert_array_equal(out.num_calls_B, real_hidden)
  # One slot: a prefill per row (the first outside the loop; the all-visible row's slot is
  # refilled at once), then one round per token (the last round's draft call is wasted).
  assert int(out.num_network_calls) == len(tokens) + real_hidden.sum()


def test_a_refill_prefills_its_rows_in_one_call():
  """8 rows of 3 hidden tokens each through 4 slots decode in two waves of 3 rounds; between
  them the 4 freed slots are refilled by one prefill call of 4 rows, or by 4 calls of one."""
  rs = np.random.default_rng(0)
  visible = np.ones((8, LENGTH), bool)
  for row in visible:
    row[rs.choice(LENGTH, 3, replace=False)] = False
  tokens = np.full((8, LENGTH), NUM_SPECIAL + 1, np.int32)
  run = lambda refill: sampling.generate(NET, PARAMS, tokens, visible, jax.random.key(0),
                                         method="sequential", slots=4, refill=refill)
  one, four = run(1), run(4)
  np.testing.assert_array_equal(four.tokens_BxL, one.tokens_BxL)
  rounds = 2 * 3  # one call each
  assert int(four.num_network_calls) == 1 + 1 + rounds
  assert int(one.num_network_calls) == 1 + 4 + rounds


@pytest.mark.parametrize("slots", [0, 13, 2.0, True, "4"])
def test_bad_slots_raise_before_anything_runs(slots):
  tokens, visible, _, _ = _rows()
  with pytest.raises(ValueError, match="slots"):
    sampling.generate(NET, PARAMS, tokens, visible, jax.random.key(0), slots=slots)


@pytest.mark.parametrize("refill", [0, 5, 2.0, True, "2"])
def test_bad_refill_raises_before_anything_runs(refill):
  tokens, visible, _, _ = _rows()
  with pytest.raises(ValueError, match=r"refill=.*expected an int from 1 to the number of "
                                       r"slots \(4\)"):
    sampling.generate(NET, PARAMS, tokens, visible, jax.random.key(0), slots=4, refill=refill)


def test_sample_mode_fills_prompts_through_slots_as_all_at_once():
  """``--mode=sample``'s fill (``config.sample.slots``): several prompts through one slot give
  what all at once gives."""
  model = models.build(model_config(vocab_size=128, num_layers=1, d_model=16, num_heads=2,
                                    d_ff=32, num_special_tokens=4, max_len=24))
  params = model.init(jax.random.key(1), *models.example_inputs(1, 24, 2))
  loaded = inference.Loaded(model, params, CharTokenizer(), None, 0)
  texts = ["ab<mask:5>c", "<mask:2>xyz", "no span", "q<mask:9>"]
  spec = sampling.SamplerSpec("assd_fused", k=2)
  fill = inference._fill  # pylint: disable=protected-access
  together, one_slot = (fill(loaded, texts, spec, 0, slots, False) for slots in (0, 1))
  for a, b in zip(together, one_slot):
    np.testing.assert_array_equal(a, b)
