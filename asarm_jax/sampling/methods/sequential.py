"""``sequential`` (``k = 1``) and ``parallel``: commit the pending block, draft the next one.

``sequential`` is exact because the first draft row's mask (``s < n``) is the density rule
for rank ``n``; ``parallel`` commits ``k`` conditionally independent drafts and is NOT exact.
One call per round; every call is counted for rows with tokens left.
"""
from __future__ import annotations

from typing import Any

from asarm_jax.sampling import drafts
from asarm_jax.sampling import state as state_lib
from asarm_jax.sampling.network import Network
from asarm_jax.sampling.spec import SamplerSpec
from asarm_jax.sampling.state import State


CALLS_PER_ROUND = 1  # network calls of one round, for the whole batch

def init(net: Network, params: Any, spec: SamplerSpec, state: State, use_cache: bool) -> State:
  return drafts.first_block(net, params, state, spec.k, use_cache)


def round(net: Network, params: Any, spec: SamplerSpec, state: State) -> State:
  rng_B, rng_draft_B = state_lib.split(state.rng_B, 2)
  _, valid_BxK = state_lib.targets(state.num_decoded_B, state.num_target_B, spec.k)
  state = state_lib.commit(state, state.carry.drafts_BxK, valid_BxK.sum(-1), state.num_cached_B)
  return drafts.next_block(net, params, state, spec.k, rng_draft_B, state.num_cached_B,
                           spec.k).replace(rng_B=rng_B)
