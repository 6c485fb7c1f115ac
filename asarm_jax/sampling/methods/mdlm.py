"""``mdlm``: a masked-diffusion model's ancestral sampler, ``k`` tokens unmasked per call.

For a network trained with ``objective.kind="mdlm"`` (:mod:`asarm_jax.mdlm`). The hidden
positions are unmasked in a uniformly random order (drawn from the row's key; ``order_BxL`` is
not read), ``k`` per call: each call sees every token unmasked so far, bidirectionally (the
unmasked tokens are the prompt of the call, ``num_visible = n``), and the next ``k`` positions
of the order are drawn independently from their marginals (the draft rule: no masked token is
seen). ``k = 1`` makes calls = tokens and samples ``E_sigma prod_i p(x_sigma(i) | x_sigma(<i))``
with ``sigma`` uniform, the model's any-order ancestral sampler; ``k > 1`` takes ``ceil(h / k)``
calls for ``h`` hidden tokens and samples a product of marginals within each step, as masked
diffusion does with fewer steps. Every unmasked token's content changes when more are
unmasked, so no KV cache is kept: each call recomputes every content row. Not exact for an
AS-ARM. One call per round, counted for every row with tokens left.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from asarm_jax.sampling import drafts
from asarm_jax.sampling import state as state_lib
from asarm_jax.sampling.network import Network
from asarm_jax.sampling.spec import SamplerSpec
from asarm_jax.sampling.state import State

CALLS_PER_ROUND = 1  # network calls of one round, for the whole batch


def _shuffled(state: State, rng_B: jax.Array) -> State:
  """The hidden ranks ``m..num_target-1`` in a uniformly random order; the prompt and the
  padding keep theirs."""
  length = state.perm_BxL.shape[1]
  rank_L = jnp.arange(length)
  hidden_BxL = ((rank_L >= state.num_visible_B[:, None])
                & (rank_L < state.num_target_B[:, None]))
  u_BxL = jax.vmap(lambda key: jax.random.uniform(key, (length,)))(rng_B)
  key_BxL = jnp.where(hidden_BxL, state.num_visible_B[:, None] + u_BxL, rank_L)
  new_rank_BxL = jnp.argsort(key_BxL, axis=-1)  # new rank r holds old rank new_rank[r]
  take = lambda x_BxL: jnp.take_along_axis(x_BxL, new_rank_BxL, 1)
  return state.replace(perm_BxL=take(state.perm_BxL), tokens_rank_BxL=take(state.tokens_rank_BxL))


def _unmask(net: Network, params: Any, spec: SamplerSpec, state: State,
            rng_B: jax.Array) -> State:
  """The call for the next ``k`` ranks given every unmasked token, bidirectionally."""
  unmasked = state.replace(num_visible_B=state.num_decoded_B, cache=None)
  drafted = drafts.next_block(net, params, unmasked, spec.k, rng_B, state.num_decoded_B, 0)
  return drafted.replace(num_visible_B=state.num_visible_B)


def init(net: Network, params: Any, spec: SamplerSpec, state: State, use_cache: bool) -> State:
  """A random order, then the first call (given the prompt). ``use_cache`` is not read."""
  rng_B, rng_order_B, rng_draft_B = state_lib.split(state.rng_B, 3)
  state = _shuffled(state, rng_order_B).replace(rng_B=rng_B, cache=None)
  return _unmask(net, params, spec, state, rng_draft_B)


def round(net: Network, params: Any, spec: SamplerSpec, state: State) -> State:
  """Commit the ``k`` drawn tokens (those of real hidden ranks), then draw the next ``k``."""
  rng_B, rng_draft_B = state_lib.split(state.rng_B, 2)
  _, valid_BxK = state_lib.targets(state.num_decoded_B, state.num_target_B, spec.k)
  state = state_lib.commit(state, state.carry.drafts_BxK, valid_BxK.sum(-1),
                           state.num_cached_B)
  return _unmask(net, params, spec, state, rng_draft_B).replace(rng_B=rng_B)
