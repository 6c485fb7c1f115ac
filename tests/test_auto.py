"""``method="auto"``: the draft size chosen per row (or per batch) and round, and the cost
model it reads.

The chi-square runs ``auto_k4`` (calls as the cost) are in ``test_exactness.py`` (analytic
joint) and ``test_sampling.py`` (network), and auto's rows are checked independent of slots and
neighbours in ``test_continuous_batching.py``. Here: with a cost under which the best size
depends on the acceptance, rows switch sizes and the samples still follow the sequential
joint; the limits (drafting never pays: sequential; drafting is free: always the largest
size); the choice rule; the cost file.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import sampling
from asarm_jax.sampling import cost_model
from asarm_jax.sampling.methods import auto
from tests import analytic_joint
from tests.sampling_cases import (ALPHA, GROUPS, LENGTH, NUM_SPECIAL, VOCAB, batch,
                                  check_prompt_padding_and_calls, hidden_in_order, p_values)

NET = analytic_joint.MixtureOfChains(LENGTH, VOCAB, NUM_SPECIAL)
PARAMS = analytic_joint.random_params(0, LENGTH, VOCAB)
SIZES = auto.sizes(sampling.SamplerSpec("auto", k=4))  # (0, 1, 2, 3, 4)


def _with_cost(tmp_path, monkeypatch, round_ms_S) -> None:
  """A cost file for the analytic network: the same ms at every batch size."""
  monkeypatch.setenv("ASARM_JAX_CACHE_DIR", str(tmp_path))
  cost_model.save(NET, {"batch_sizes": [1, 1 << 20], "sizes": list(SIZES),
                        "round_ms": [list(round_ms_S)] * 2})


def _generate(rows: slice = slice(None), seed: int = 7, temperature: float = 1.0,
              size_choice: str = "row"):
  tokens, visible, order, lengths = (x[rows] for x in batch())
  spec = sampling.SamplerSpec("auto", k=4, temperature=temperature, size_choice=size_choice)
  return jax.tree.map(np.asarray, sampling.generate(
      NET, PARAMS, tokens, visible, jax.random.key(seed), spec=spec, order_BxL=order,
      length_B=lengths))


def test_sizes():
  assert SIZES == (0, 1, 2, 3, 4)
  assert auto.sizes(sampling.SamplerSpec("auto", k=10)) == (0, 1, 2, 3, 5, 8, 10)
  assert auto.sizes(sampling.SamplerSpec("auto", k=1)) == (0, 1)


def test_switching_sizes_within_rows_keeps_the_sequential_joint(tmp_path, monkeypatch):
  """Under this cost the best size moves with the tokens left and the acceptance, so rows
  switch sizes from round to round, some between drafting and sequential steps; the samples of
  every group still pass the chi-square test against the brute-force sequential joint. (Rows
  of 3-4 hidden tokens end in two or three rounds, and a round's next size is chosen before
  its verification, so an acceptance moves a choice only in a row's third round: how it does
  is the next test's.)"""
  _with_cost(tmp_path, monkeypatch, (1.0, 1.7, 1.9, 2.1, 2.3))
  gen = _generate()
  rounds_BxS = gen.rounds_by_size_BxS
  assert ((rounds_BxS > 0).sum(1) >= 2).mean() > 0.05
  assert ((rounds_BxS[:, 0] > 0) & (rounds_BxS[:, 1:].sum(1) > 0)).mean() > 0.01
  check_prompt_padding_and_calls(gen, "auto_k4")
  table = analytic_joint.table(PARAMS)
  joints = {}
  for name, group in GROUPS.items():
    known = {pos: tok - NUM_SPECIAL for pos, tok in group[0].items()}
    joints[name] = analytic_joint.sequential_joint(table, known, hidden_in_order(group),
                                                   (1.0,))[1.0]
  p = p_values(gen, joints)
  assert all(value > ALPHA for value in p.values()), p


def test_one_size_per_batch_keeps_the_sequential_joint(tmp_path, monkeypatch):
  """``size_choice="batch"``: every live row drafts the batch's size, chosen from all rows'
  past; the choices differ from the rows' own, and the samples of every group still pass the
  chi-square test against the brute-force sequential joint."""
  _with_cost(tmp_path, monkeypatch, (1.0, 1.7, 1.9, 2.1, 2.3))
  gen = _generate(size_choice="batch")
  assert (gen.rounds_by_size_BxS != _generate().rounds_by_size_BxS).any(1).mean() > 0.05
  check_prompt_padding_and_calls(gen, "auto_k4")
  table = analytic_joint.table(PARAMS)
  joints = {name: analytic_joint.sequential_joint(
      table, {pos: tok - NUM_SPECIAL for pos, tok in group[0].items()},
      hidden_in_order(group), (1.0,))[1.0] for name, group in GROUPS.items()}
  p = p_values(gen, joints)
  assert all(value > ALPHA for value in p.values()), p


def test_a_rejection_turns_a_row_sequential_until_it_probes_drafting_again():
  """At the prior acceptance this cost picks 3 drafts; a rejection of the first draws a
  sequential step (its acceptance 0.56: a draft pays above 0.6); the depth then steps back to
  the prior in every sequential round, and drafting resumes at the fourth."""
  round_ms_S = jnp.asarray([1.0, 1.6, 2.2, 2.6, 3.0])
  live_B, left_B = jnp.asarray([True]), jnp.asarray([100])
  acceptance_1xD = jnp.full((1, 4), auto.PRIOR_ACCEPTANCE)
  assert SIZES[int(auto.choose(SIZES, acceptance_1xD, left_B, round_ms_S)[0])] == 3
  acceptance_1xD = auto._update(acceptance_1xD, live_B, jnp.asarray([3]), jnp.asarray([0]),
                                jnp.asarray([False]))
  np.testing.assert_allclose(acceptance_1xD, [[0.56, 0.8, 0.8, 0.8]], rtol=1e-6)
  chosen = []
  for _ in range(5):
    chosen.append(SIZES[int(auto.choose(SIZES, acceptance_1xD, left_B, round_ms_S)[0])])
    acceptance_1xD = auto._update(acceptance_1xD, live_B, jnp.asarray([0]), jnp.asarray([0]),
                                  jnp.asarray([False]))
  assert chosen[:4] == [0, 0, 0, 0] and chosen[4] > 0, chosen


def test_an_exact_first_draft_does_not_count_as_accepted():
  """Depth 1 of a block whose first draft is exact is not reached (it steps to the prior, as
  depth 3, beyond the block, does); depth 2 is, and accepted."""
  acceptance_1xD = jnp.full((1, 3), 0.5)
  after = auto._update(acceptance_1xD, jnp.asarray([True]), jnp.asarray([2]), jnp.asarray([2]),
                       jnp.asarray([True]))
  forgotten = 0.5 + auto.FORGET * (auto.PRIOR_ACCEPTANCE - 0.5)
  np.testing.assert_allclose(after, [[forgotten, 0.65, forgotten]], rtol=1e-6)


def test_where_drafting_never_pays_auto_is_sequential(tmp_path, monkeypatch):
  """The first round verifies the prefill's exact first draft (a block of 1: the draft and a
  bonus token, no call counted); every later round is a sequential step of one call."""
  _with_cost(tmp_path, monkeypatch, (1.0, 100.0, 100.0, 100.0, 100.0))
  gen = _generate(slice(None, None, 500))
  rounds_BxS, hidden_B = gen.rounds_by_size_BxS, gen.num_generated_B
  np.testing.assert_array_equal(rounds_BxS[:, 1], 1)
  np.testing.assert_array_equal(rounds_BxS[:, 2:], 0)
  np.testing.assert_array_equal(rounds_BxS[:, 0], np.maximum(hidden_B - 2, 0))
  np.testing.assert_array_equal(gen.num_calls_B, np.maximum(hidden_B - 1, 1))


def test_where_drafting_is_free_auto_drafts_the_most_it_can(tmp_path, monkeypatch):
  """Every round then takes the largest size that the tokens left can use: 4, or all of them
  (the expected tokens are capped at the tokens left, and ties go to the smaller size)."""
  _with_cost(tmp_path, monkeypatch, (1.0, 1.0, 1.0, 1.0, 1.0))
  gen = _generate(slice(None, None, 500))
  rounds_BxS, hidden_B = gen.rounds_by_size_BxS, gen.num_generated_B
  # A block of k >= 1 commits at least 1 token and drafting is free, so a sequential step is
  # chosen only where one token is left: never as a row's first round (the prefill's block).
  assert (rounds_BxS[:, 0] <= 1).all()
  assert (rounds_BxS[:, 1:].sum(1) >= 1).all()
  # With 5 or more left, the largest size: a row's first round (h >= 5) is at size 4.
  assert (rounds_BxS[hidden_B >= 5, 4] >= 1).all()


def test_choose_maximises_expected_tokens_per_ms():
  acceptance_BxD = jnp.asarray([[0.9] * 4, [0.1] * 4, [0.9] * 4])
  left_B = jnp.asarray([10, 10, 2])
  round_ms_S = jnp.asarray([1.0, 1.7, 2.2, 2.4, 2.6])
  # E(k) = 1 + a + a^2 + ... + a^k, capped at the tokens left.
  want = []
  for a, left in ((0.9, 10), (0.1, 10), (0.9, 2)):
    tokens = [min(1 + sum(a ** j for j in range(1, k + 1)), left) for k in SIZES]
    want.append(int(np.argmax(np.asarray(tokens) / np.asarray(round_ms_S))))
  assert want == [4, 0, 1]
  np.testing.assert_array_equal(auto.choose(SIZES, acceptance_BxD, left_B, round_ms_S), want)
  # Per batch: one size, of the counted rows' expected tokens summed.
  tokens_BxS = np.asarray([[min(1 + sum(a ** j for j in range(1, k + 1)), left) for k in SIZES]
                           for a, left in ((0.9, 10), (0.1, 10), (0.9, 2))])
  for counted in ([True, True, True], [True, False, True], [False, True, False]):
    best = int(np.argmax(tokens_BxS[counted].sum(0) / np.asarray(round_ms_S)))
    np.testing.assert_array_equal(auto.choose(SIZES, acceptance_BxD, left_B, round_ms_S,
                                              jnp.asarray(counted)), [best] * 3)
  assert auto.choose(SIZES, acceptance_BxD, left_B, round_ms_S, jnp.asarray([1, 0, 0], bool)
                     )[0] == 4
  assert auto.choose(SIZES, acceptance_BxD, left_B, round_ms_S, jnp.asarray([0, 1, 0], bool)
                     )[0] == 0


def test_the_cost_file_is_read_interpolated_and_falls_back_to_calls(tmp_path, monkeypatch):
  monkeypatch.setenv("ASARM_JAX_CACHE_DIR", str(tmp_path))
  np.testing.assert_array_equal(cost_model.round_ms(NET, SIZES, 8), [1] * 5)  # no file
  table = {"batch_sizes": [1, 64], "sizes": [0, 1, 2, 3, 4],
           "round_ms": [[1, 2, 3, 4, 5], [7, 8, 9, 10, 11]]}
  written = cost_model.save(NET, table)
  assert written == cost_model.path(NET) and written.startswith(str(tmp_path))
  np.testing.assert_allclose(cost_model.round_ms(NET, SIZES, 1), [1, 2, 3, 4, 5])
  np.testing.assert_allclose(cost_model.round_ms(NET, SIZES, 8), [4, 5, 6, 7, 8])  # halfway
  np.testing.assert_allclose(cost_model.round_ms(NET, SIZES, 512), [7, 8, 9, 10, 11])
  np.testing.assert_array_equal(cost_model.round_ms(NET, (0, 5), 8), [1, 1])  # 5 not measured
  with open(written, "w", encoding="utf-8") as f:  # an earlier file, of assd's rounds
    json.dump(table, f)
  np.testing.assert_array_equal(cost_model.round_ms(NET, SIZES, 8), [1] * 5)
  other = analytic_joint.MixtureOfChains(LENGTH + 1, VOCAB, NUM_SPECIAL)
  assert cost_model.path(other) != written


def test_the_choices_are_described_in_one_line():
  spec = sampling.SamplerSpec("auto", k=4)
  want = "draft sizes 0: 30%, 3: 10%, 4: 60% of 10 rounds"
  assert auto.describe_choices(spec, [3, 0, 0, 1, 6]) == want
  assert auto.describe_choices(spec, [0] * 5) == "draft sizes none of 0 rounds"
