"""A block of pending drafts and speculative verification: shared by the block methods.

The block methods (``sequential``/``parallel``, ``assd``, ``assd_fused``) carry a
:class:`Block` of ``k`` drafts for ranks ``n..n+k-1`` with their proposal ``q``. The
*prefill* (:func:`first_block`) is a draft call given the prompt only, so its first draft is
the exact conditional; a *draft call* (:func:`next_block`) proposes
``q_i = p(x_{n+i} | ranks < n)`` with the draft mask, whose first row is the density rule for
rank ``n``.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from asarm_jax.sampling import state as state_lib
from asarm_jax.sampling.network import Network
from asarm_jax.sampling.state import State

Array = jnp.ndarray


@flax.struct.dataclass
class Block:
  """Pending drafts for ranks ``n..n+k-1`` and their proposal."""
  drafts_BxK: Array  # int32.
  logq_BxKxV: Array  # proposal log-probabilities.
  exact_first_B: Array  # bool: the first draft was drawn from the exact conditional.


def draft_log_probs(net: Network, params: Any, state: State, k: int) -> Array:
  """Uncached draft call: ``log q_i`` (``B x k x V``) for ranks ``n..n+k-1`` given the ranks
  ``< n``, at the state's temperature."""
  target_BxK, valid_BxK = state_lib.targets(state.num_decoded_B, state.num_target_B, k)
  return state_lib.call(net, params, state.replace(cache=None), state.tokens_rank_BxL,
                        target_BxK, valid_BxK, state.num_decoded_B, state.num_decoded_B, 0)[0]


def next_block(net: Network, params: Any, state: State, k: int, rng_B: jax.Array,
               content_start_B: Array, num_content: int) -> State:
  """The draft call for the block after the committed ranks; caches ``num_content`` ranks from
  ``content_start`` (the committed tokens not cached yet). Counts a call for live rows."""
  n_B = state.num_decoded_B
  target_BxK, valid_BxK = state_lib.targets(n_B, state.num_target_B, k)
  logq_BxKxV, cache = state_lib.call(net, params, state, state.tokens_rank_BxL, target_BxK,
                                     valid_BxK, n_B, content_start_B, num_content)
  block = Block(state_lib.draw(rng_B, logq_BxKxV), logq_BxKxV, jnp.ones_like(n_B, bool))
  return state.replace(carry=block, num_cached_B=n_B, cache=cache,
                       num_calls_B=state.num_calls_B + state_lib.live(state))


def first_block(net: Network, params: Any, state: State, k: int, use_cache: bool) -> State:
  """The prefill: a cache of one slot per rank (if ``use_cache``) that gets the whole
  prompt's content, and the first block of ``k`` drafts, each given the prompt only."""
  rng_B, rng_draft_B = state_lib.split(state.rng_B, 2)
  batch, length = state.tokens_rank_BxL.shape
  state = state.replace(rng_B=rng_B, cache=net.init_cache(batch, length) if use_cache else None)
  return next_block(net, params, state, k, rng_draft_B,
                    jnp.zeros_like(state.num_decoded_B), state.tokens_rank_BxL.shape[1])


def bounds(target_BxK1: Array, valid_BxK1: Array, num_target_B: Array) -> tuple[Array, Array]:
  """Of a pending block of ``k`` drafts at the pointer, given the ``k + 1`` ranks from it
  (:func:`state_lib.targets`): how many drafts are valid (int32 ``B``: the tokens left, at most
  ``k``), and whether a bonus rank follows them (bool ``B``)."""
  return (valid_BxK1[:, :-1].sum(-1).astype(jnp.int32), target_BxK1[:, -1] < num_target_B)


def _row(x_BxKxV: Array, index_B: Array) -> Array:
  """``x[b, index[b]]``, ``B x V``."""
  return jnp.take_along_axis(x_BxKxV, index_B[:, None, None], 1)[:, 0]


def verify(rng_B: jax.Array, block: Block, logp_BxK1xV: Array, num_valid_B: Array,
           has_bonus_B: Array) -> tuple[Array, Array, Array]:
  """Speculative rejection sampling of the block's ``k`` drafts against the density rows.

  Where ``block.exact_first_B``, draft 1 uses ``p_1 := q_1`` (same mask, so it is the exact
  conditional) and is always accepted. Draft ``i`` is accepted while
  ``u_i < min(1, p_i(x~_i) / q_i(x~_i))``; the first rejection ``j`` is replaced by a draw from
  ``norm(max(0, p_j - q_j))`` (``p_j`` if that has no mass). If every valid draft is accepted
  and ``has_bonus_B``, the bonus rank (``n + num_valid``) gets a draw from its ``p`` row (row
  ``num_valid``; the rows of a row's block beyond it are not read). Returns the tokens for
  ranks ``n..n+k`` (``B x (k+1)``), how many of them to commit (``B``) and how many drafts
  were accepted (``B``).
  """
  drafts_BxK, logq_BxKxV = block.drafts_BxK, block.logq_BxKxV
  k = drafts_BxK.shape[1]
  rng_accept_B, rng_residual_B, rng_bonus_B = state_lib.split(rng_B, 3)
  logp_BxKxV = logp_BxK1xV[:, :k]
  logp_BxKxV = logp_BxKxV.at[:, 0].set(
      jnp.where(block.exact_first_B[:, None], logq_BxKxV[:, 0], logp_BxKxV[:, 0]))
  logq_x_BxK = jnp.take_along_axis(logq_BxKxV, drafts_BxK[..., None], -1)[..., 0]
  logp_x_BxK = jnp.take_along_axis(logp_BxKxV, drafts_BxK[..., None], -1)[..., 0]
  u_BxK = state_lib.uniform(rng_accept_B, k)  # in [0, 1): ratio 1 always accepts.
  accept_BxK = u_BxK < jnp.exp(jnp.minimum(logp_x_BxK - logq_x_BxK, 0.0))
  accept_BxK &= jnp.arange(k) < num_valid_B[:, None]
  num_accepted_B = jnp.cumprod(accept_BxK, axis=1).sum(1).astype(jnp.int32)

  first_rejected_B = jnp.minimum(num_accepted_B, k - 1)
  p_BxV = jnp.exp(_row(logp_BxKxV, first_rejected_B))
  residual_BxV = jnp.maximum(p_BxV - jnp.exp(_row(logq_BxKxV, first_rejected_B)), 0.0)
  has_mass_Bx1 = (residual_BxV > 0).any(-1, keepdims=True)
  residual_BxV = jnp.where(has_mass_Bx1, residual_BxV, p_BxV)
  residual_B = state_lib.draw(rng_residual_B, jnp.log(residual_BxV))
  bonus_B = state_lib.draw(rng_bonus_B, _row(logp_BxK1xV, num_valid_B))

  rejected_B = num_accepted_B < num_valid_B
  fix_B = jnp.where(rejected_B, residual_B, bonus_B).astype(drafts_BxK.dtype)
  tokens_BxK1 = jnp.concatenate([drafts_BxK, fix_B[:, None]], axis=1)
  tokens_BxK1 = jnp.where(jnp.arange(k + 1) == num_accepted_B[:, None], fix_B[:, None],
                          tokens_BxK1)
  return tokens_BxK1, num_accepted_B + (rejected_B | has_bonus_B), num_accepted_B
