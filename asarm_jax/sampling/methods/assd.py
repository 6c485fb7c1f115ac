"""``assd``: any-subset speculative decoding with two calls per round.

A *density call* scores the pending drafts sigma-causally (``p_i``: each sees the ranks
before it, drafts included; one extra *bonus* row after the block), speculative rejection
sampling (:func:`asarm_jax.sampling.drafts.verify`) keeps an accepted prefix plus one residual
or bonus token, then a draft call proposes the next block. The density call is counted only
for rows whose block has at least two valid drafts (a lone exact draft needs no check), so
the round's two calls commit at least two tokens.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from asarm_jax.sampling import drafts
from asarm_jax.sampling import state as state_lib
from asarm_jax.sampling.network import Network
from asarm_jax.sampling.spec import SamplerSpec
from asarm_jax.sampling.state import State

CALLS_PER_ROUND = 2  # network calls of one round, for the whole batch

def init(net: Network, params: Any, spec: SamplerSpec, state: State, use_cache: bool) -> State:
  return drafts.first_block(net, params, state, spec.k, use_cache)


def round(net: Network, params: Any, spec: SamplerSpec, state: State) -> State:
  rng_B, rng_draft_B, rng_verify_B = state_lib.split(state.rng_B, 3)
  k, n_B, block = spec.k, state.num_decoded_B, state.carry
  target_BxK1, valid_BxK1 = state_lib.targets(n_B, state.num_target_B, k + 1)
  num_valid_B, has_bonus_B = drafts.bounds(target_BxK1, valid_BxK1, state.num_target_B)
  drafted_rank_BxL = state_lib.write(state.tokens_rank_BxL, n_B, block.drafts_BxK, num_valid_B)
  # The pending drafts' content (ranks n..n+k-1, cached from n) and k + 1 density rows.
  logp_BxK1xV, cache = state_lib.call(net, params, state, drafted_rank_BxL, target_BxK1,
                                      valid_BxK1, None, n_B, k)
  tokens_BxK1, num_new_B, num_accepted_B = drafts.verify(rng_verify_B, block, logp_BxK1xV,
                                                         num_valid_B, has_bonus_B)
  state = state.replace(cache=cache, num_calls_B=state.num_calls_B + (num_valid_B >= 2))
  state = state_lib.commit(state, tokens_BxK1, num_new_B, n_B + num_accepted_B)
  return drafts.next_block(net, params, state, k, rng_draft_B, state.num_cached_B,
                           1).replace(rng_B=rng_B)
