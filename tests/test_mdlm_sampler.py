"""The masked-diffusion sampler (``method="mdlm"``): one token per call samples the model's
any-order ancestral law; ``k`` per call takes ``ceil(h / k)`` calls.

The network is a randomly initialised tiny two-stream model with its weights scaled up (sharp
conditionals that depend on the order): its conditionals are not those of one joint, so the law of a random-order sampler is the mixture over orders ``sigma`` of
``prod_i p(x_sigma(i) | x_sigma(<i))``. That mixture is enumerated over every order and every
completion from the network's own draft-rule conditionals (``density.log_prob(...,
independent=True)`` with the tokens unmasked so far as the visible set), independently of the
sampler, and compared with 10,000 samples per prompt by the chi-square test of
``sampling_cases``. A sampler that kept left to right, saw a masked token or drew two tokens
per call would fail it.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import density, models, sampling
from tests.helpers import model_config
from tests.sampling_cases import (ALPHA, LENGTH, NUM_SPECIAL, VOCAB, cells, chi_square,
                                  group_arrays, hidden)

GROUPS = {"infill": ({1: 9, 4: 6, 5: 7}, LENGTH), "padded": ({0: 6}, 5)}  # h = 3 and 4
ROWS = 10_000


@pytest.fixture(scope="module")
def network():
  model = models.build(model_config(vocab_size=VOCAB + NUM_SPECIAL, num_layers=2, d_model=32,
                                    num_heads=2, d_ff=64, num_special_tokens=NUM_SPECIAL,
                                    max_len=LENGTH))
  params = model.init(jax.random.key(5), *models.example_inputs(1, LENGTH, 2))
  return model, jax.tree.map(lambda x: 3 * x, params)  # sharper, more order-dependent


def _any_order_law(model, params, visible_tokens: dict, length: int) -> np.ndarray:
  """Probabilities of all ``VOCAB^h`` completions (cells as ``sampling_cases.cells``) under the
  uniform mixture over orders of the products of the network's conditionals."""
  tokens, visible, _ = group_arrays(visible_tokens, None, length)
  tokens, visible = tokens[:, :length], visible[:, :length]
  slots = hidden(visible_tokens, length)
  fills = np.array(list(itertools.product(range(VOCAB), repeat=len(slots))))
  tokens_CxL = np.repeat(tokens, len(fills), 0)
  tokens_CxL[:, slots] = fills + NUM_SPECIAL
  law = np.zeros(len(fills))
  orders = list(itertools.permutations(slots))
  for order in orders:
    logp = np.zeros(len(fills))
    for i, position in enumerate(order):
      seen = visible.copy()
      seen[0, list(order[:i])] = True
      logp_CxL = density.log_prob(model, params, jnp.asarray(tokens_CxL),
                                  jnp.asarray(np.repeat(seen, len(fills), 0)), independent=True)
      logp += np.asarray(logp_CxL, np.float64)[:, position]
    law += np.exp(logp) / len(orders)
  assert abs(law.sum() - 1) < 1e-4
  return law / law.sum()


def _generate(model, params, k: int, seed: int):
  """``ROWS`` rows of every group in one batch (numpy outputs)."""
  parts = [group_arrays(v, None, length) for v, length in GROUPS.values()]
  tokens, visible = (np.repeat(np.concatenate([p[i] for p in parts]), ROWS, 0) for i in (0, 1))
  lengths = np.repeat([length for _, length in GROUPS.values()], ROWS).astype(np.int32)
  return jax.tree.map(np.asarray, sampling.generate(
      model, params, tokens, visible, jax.random.key(seed), method="mdlm", k=k,
      length_B=lengths)), tokens, visible, lengths


def test_one_token_per_call_samples_the_any_order_law(network):
  model, params = network
  gen, tokens, visible, lengths = _generate(model, params, 1, seed=3)
  kept = visible | (np.arange(LENGTH) >= lengths[:, None])
  np.testing.assert_array_equal(gen.tokens_BxL[kept], tokens[kept])
  np.testing.assert_array_equal(gen.num_calls_B, gen.num_generated_B)
  for g, (name, (visible_tokens, length)) in enumerate(GROUPS.items()):
    found = cells(gen.tokens_BxL[g * ROWS:(g + 1) * ROWS], visible_tokens, length)
    stat, dof, p = chi_square(found, _any_order_law(model, params, visible_tokens, length))
    print(f"{name}: chi2={stat:.1f} dof={dof} p={p:.3g}")
    assert p > ALPHA, name


def test_k_tokens_per_call_take_ceil_h_over_k_calls(network):
  model, params = network
  gen, _, _, _ = _generate(model, params, 2, seed=4)
  hidden_B = gen.num_generated_B
  np.testing.assert_array_equal(gen.num_calls_B, -(-hidden_B // 2))
  assert set(np.unique(hidden_B)) == {3, 4}
