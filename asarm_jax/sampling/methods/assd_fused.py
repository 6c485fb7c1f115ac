"""``assd_fused``: one call per round verifies the pending block and drafts the next one.

The call's query rows are the ``k + 1`` density rows of the pending block, then, for every
possible acceptance length ``a = 0..k``, the ``k`` draft rows for the ranks after ``a``
accepted drafts and one residual/bonus token, conditioned on exactly those ``a`` accepted
drafts (``num_decoded = n + a`` for those rows). After acceptance the rows of the realised
``a`` become the next pending block, on device. Such a block does not see its preceding
residual token, so its first draft is no longer exact; the always-committed residual/bonus
token keeps every call productive instead. A call is counted for every unfinished row except
an exact lone draft, so the prefill's call is paid back by the first round, which accepts its
exact first draft and adds a residual or bonus token.

The call returns features; the head (and the log-softmax) runs on the rows used only: the
``k + 1`` density rows, then the ``k`` draft rows of the realised ``a``, i.e. ``2k + 1`` rows
instead of ``(k + 1)^2``.
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

Array = jnp.ndarray

CALLS_PER_ROUND = 1  # network calls of one round, for the whole batch

def init(net: Network, params: Any, spec: SamplerSpec, state: State, use_cache: bool) -> State:
  return drafts.first_block(net, params, state, spec.k, use_cache)


def verify_and_draft(net: Network, params: Any, state: State, block: drafts.Block, k: int,
                     num_valid_B: Array, has_bonus_B: Array, rng_draft_B: jax.Array,
                     rng_verify_B: jax.Array) -> tuple[State, Array, Array, Array, drafts.Block]:
  """One fused call at block size ``k`` (static; a row's own block may be shorter: its
  ``num_valid_B`` drafts): verifies the pending ``block`` (``k`` columns) and drafts ``k``
  tokens for the next one. Returns the state with the call's cache, the tokens for ranks
  ``n..n+k`` with how many to commit and how many drafts were accepted
  (:func:`drafts.verify`), and the next block."""
  n_B, num_target_B = state.num_decoded_B, state.num_target_B
  batch, length = state.tokens_rank_BxL.shape
  target_BxK1, valid_BxK1 = state_lib.targets(n_B, num_target_B, k + 1)
  drafted_rank_BxL = state_lib.write(state.tokens_rank_BxL, n_B, block.drafts_BxK, num_valid_B)
  # Content rows: the uncached residual/bonus rank (num_cached = n - 1, or n after the
  # prefill) and the drafts. Query rows: k + 1 density rows, then for each acceptance length
  # a = 0..k the k draft rows of ranks n+a+1.. given ranks < n+a.
  a_A = jnp.arange(k + 1, dtype=jnp.int32)
  draft_target_BxAK = ((n_B[:, None] + a_A + 1)[:, :, None]
                       + jnp.arange(k, dtype=jnp.int32)).reshape(batch, -1)
  target_BxT = jnp.concatenate([target_BxK1, draft_target_BxAK], 1)
  valid_BxT = jnp.concatenate([valid_BxK1, draft_target_BxAK < num_target_B[:, None]], 1)
  limit_BxT = jnp.concatenate([jnp.full_like(target_BxK1, length),
                               jnp.repeat(n_B[:, None] + a_A, k, axis=1)], 1)
  features_BxTxF, cache = state_lib.call(net, params, state, drafted_rank_BxL, target_BxT,
                                         valid_BxT, limit_BxT, state.num_cached_B, k + 1,
                                         head=False)
  tokens_BxK1, num_new_B, num_accepted_B = drafts.verify(
      rng_verify_B, block, state_lib.log_probs(net, params, state, features_BxTxF[:, :k + 1]),
      num_valid_B, has_bonus_B)
  next_BxAxKxF = features_BxTxF[:, k + 1:].reshape((batch, k + 1, k, -1))
  next_BxKxF = jnp.take_along_axis(next_BxAxKxF, num_accepted_B[:, None, None, None], 1)[:, 0]
  logq_next_BxKxV = state_lib.log_probs(net, params, state, next_BxKxF)
  block = drafts.Block(state_lib.draw(rng_draft_B, logq_next_BxKxV), logq_next_BxKxV,
                       jnp.zeros_like(n_B, bool))
  return state.replace(cache=cache), tokens_BxK1, num_new_B, num_accepted_B, block


def calls(state: State, block: drafts.Block, num_valid_B: Array) -> Array:
  """int32 ``B``: a fused call counts for every live row except a lone exact draft."""
  return (state_lib.live(state) & ~(block.exact_first_B & (num_valid_B == 1))).astype(jnp.int32)


def round(net: Network, params: Any, spec: SamplerSpec, state: State) -> State:
  rng_B, rng_draft_B, rng_verify_B = state_lib.split(state.rng_B, 3)
  k, n_B, block = spec.k, state.num_decoded_B, state.carry
  num_valid_B, has_bonus_B = drafts.bounds(
      *state_lib.targets(n_B, state.num_target_B, k + 1), state.num_target_B)
  state, tokens_BxK1, num_new_B, num_accepted_B, next_block = verify_and_draft(
      net, params, state, block, k, num_valid_B, has_bonus_B, rng_draft_B, rng_verify_B)
  state = state.replace(num_calls_B=state.num_calls_B + calls(state, block, num_valid_B),
                        carry=next_block, rng_B=rng_B)
  return state_lib.commit(state, tokens_BxK1, num_new_B, n_B + num_accepted_B)
