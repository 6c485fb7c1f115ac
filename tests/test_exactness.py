"""Exactness of every sampler on an analytic joint, where enumeration is exact.

The network is :class:`analytic_joint.MixtureOfChains` (a mixture of two position-dependent
Markov chains over 6 symbols), whose joint is far from a product of marginals: ``parallel``
(which samples that product) must be rejected by the very same chi-square test that every
exact method passes. The expected joint of each group is computed by brute force from the full
table (:func:`analytic_joint.sequential_joint`), independently of the network's
forward-backward conditionals; the network is itself checked against it first. The same
claims on the trained network: ``test_sampling.py``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import sampling
from asarm_jax.sampling import drafts
from asarm_jax.sampling import state as state_lib
from tests import analytic_joint
from tests.sampling_cases import (ALPHA, GROUPS, LENGTH, NUM_SPECIAL, RUNS, TEMPERATURES, VOCAB,
                                  batch, check_prompt_padding_and_calls, generate_run,
                                  hidden_in_order, p_values)

NET = analytic_joint.MixtureOfChains(LENGTH, VOCAB, NUM_SPECIAL)
PARAMS = analytic_joint.random_params(0, LENGTH, VOCAB)
TABLE = analytic_joint.table(PARAMS)


@functools.lru_cache(maxsize=None)
def _joints() -> dict[float, dict[str, np.ndarray]]:
  """``[temperature][group]``: probabilities of every completion under sequential sampling."""
  out = {t: {} for t in TEMPERATURES}
  for name, group in GROUPS.items():
    known = {pos: tok - NUM_SPECIAL for pos, tok in group[0].items()}
    by_t = analytic_joint.sequential_joint(TABLE, known, hidden_in_order(group), TEMPERATURES)
    for t in TEMPERATURES:
      out[t][name] = by_t[t]
  return out


def test_the_analytic_network_gives_the_tables_conditionals():
  """Draft rows at every pointer and density rows: the brute-force conditionals."""
  rs = np.random.default_rng(0)
  tokens = rs.integers(NUM_SPECIAL, NUM_SPECIAL + VOCAB, (6, LENGTH)).astype(np.int32)
  visible = rs.random((6, LENGTH)) < 0.4
  order = np.asarray(sampling.random_order(jax.random.key(1), (6, LENGTH)))
  state = state_lib.init_state(jnp.asarray(tokens), jnp.asarray(visible), jnp.asarray(order),
                               jnp.full((6,), LENGTH, jnp.int32), jax.random.key(0))
  perm, m = np.asarray(state.perm_BxL), np.asarray(state.num_visible_B)
  for n in range(LENGTH):
    logq = np.asarray(drafts.draft_log_probs(
        NET, PARAMS, state.replace(num_decoded_B=jnp.maximum(state.num_visible_B, n)), 2))
    for b in range(6):
      decoded = max(m[b], n)
      known = {int(perm[b, r]): int(tokens[b, perm[b, r]]) - NUM_SPECIAL for r in range(decoded)}
      for i in range(min(2, LENGTH - decoded)):
        want = analytic_joint.brute_force(TABLE, known, int(perm[b, decoded + i]))
        np.testing.assert_allclose(np.exp(logq[b, i, NUM_SPECIAL:]), want, atol=1e-5)


@pytest.mark.parametrize("run", list(RUNS))
def test_samples_follow_the_sequential_joint(run):
  """Every exact method passes the chi-square test in every group; ``parallel`` fails in
  every group where the hidden tokens depend on each other."""
  gen = generate_run(NET, PARAMS, run, seed=100 + list(RUNS).index(run))
  check_prompt_padding_and_calls(gen, run)
  p = p_values(gen, _joints()[RUNS[run][2]])
  if run.startswith("parallel"):
    assert all(value < ALPHA for value in p.values()), p
  else:
    assert all(value > ALPHA for value in p.values()), p


def test_sequential_is_assd_with_k1():
  """True by construction: at k = 1 every method runs the same round (commit the first draft,
  whose draft mask is the density rule), so outputs are identical under the same rng."""
  tokens, visible, order, lengths = (x[::1000] for x in batch())
  outs = [sampling.generate(NET, PARAMS, tokens, visible, jax.random.key(9), method=m, k=k,
                            order_BxL=order, length_B=lengths)
          for m, k in (("sequential", 4), ("assd", 1), ("parallel", 1))]
  np.testing.assert_array_equal(outs[0].num_calls_B, outs[0].num_generated_B)
  for other in outs[1:]:
    np.testing.assert_array_equal(outs[0].tokens_BxL, other.tokens_BxL)
    np.testing.assert_array_equal(outs[0].num_calls_B, other.num_calls_B)
