"""The one sampling loop: ``sequential``, ``parallel``, ``assd`` and ``assd_fused`` are variants.

Everything runs in rank space (:mod:`asarm_jax.ordering`): the prompt holds ranks ``< m``, the
row's pointer ``n`` (``num_decoded``) says how many ranks are committed, and a row is finished
when ``n`` reaches ``num_target`` (``m`` plus its number of real hidden positions; padding ranks
come after it and are never targeted).

The loop carries a block of *pending drafts* for ranks ``n..n+k-1`` with their proposal
``q``. A *prefill* call before the loop makes the first block (each draft given the prompt
only, so the first draft is the exact conditional). Each loop round then, for every unfinished
row at once:

* ``sequential`` (``k = 1``) / ``parallel``: commit the pending draft(s), then one *draft call*
  proposes the next block: ``q_i = p(x_{n+i} | ranks < n)`` (the draft mask). ``sequential`` is
  exact because the first draft row's mask (``s < n``) is the density rule for rank ``n``;
  ``parallel`` commits k conditionally independent drafts and is NOT exact.
* ``assd``: one *density call* scores the drafts sigma-causally (``p_i``: each sees the ranks
  before it, drafts included; one extra *bonus* row after the block), speculative rejection
  sampling keeps an accepted prefix plus one residual or bonus token, then a draft call
  proposes the next block (two calls per round).
* ``assd_fused``: one call per round does both jobs. Its query rows are the density rows of
  the pending block plus, for every possible acceptance length ``a``, the ``k`` draft rows
  for the ranks after ``a`` accepted drafts and one residual/bonus token, conditioned on
  exactly those ``a`` accepted drafts (``num_decoded = n + a`` for those rows). After
  acceptance the rows of the realised ``a`` become the next pending block, on device. Such a
  block does not see its preceding residual token, so its first draft is no longer exact; the
  always-committed residual/bonus token keeps every call productive instead.

With ``cache=True`` the content stream keeps a rank-indexed KV cache: the prefill writes the
prompt, and each later call computes only the content rows not yet cached (committed tokens
and the drafts being scored); stale slots from rejected drafts are masked out and overwritten
when their rank is committed. Without it every call recomputes every content row.

Call counting: the prefill counts 1. A draft call counts 1 for rows with tokens left; a
density call only for rows whose block has at least two valid drafts (a lone exact draft
needs no check); a fused call for every unfinished row, except the exact lone draft. Every row
therefore spends at most one call per generated token (``assd``: the round's two calls commit
at least two tokens; ``assd_fused``: the prefill's call is paid back by the first fused round,
which accepts its exact first draft and adds a residual or bonus token).
"""
from __future__ import annotations

import functools
import itertools
from typing import Any, Callable

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import distribution, forward, masks, models, ordering
from asarm_jax.models.two_stream import Cache
from asarm_jax.sampling import auto
from asarm_jax.sampling import tree as tree_lib

Array = jnp.ndarray

METHODS = ("sequential", "parallel", "assd", "assd_fused", "tree", "auto")


@flax.struct.dataclass
class State:
  """The loop carry; everything is per row ``b`` and in rank space."""
  tokens_rank_BxL: Array  # int32; ranks >= num_decoded hold stale values, never attended.
  perm_BxL: Array  # position of each rank (prompt, hidden in sigma order, padding last).
  num_visible_B: Array  # prompt size m.
  num_decoded_B: Array  # n: ranks < n are committed.
  num_target_B: Array  # the row is finished when n reaches this rank.
  num_calls_B: Array  # network calls spent on the row.
  rng: jax.Array
  drafts_BxK: Array  # pending drafts for ranks n..n+k-1 (int32).
  logq_BxKxV: Array  # their proposal log-probabilities.
  exact_first_B: Array  # bool: the first pending draft was drawn from the exact conditional.
  num_cached_B: Array  # the cache holds the content of ranks < num_cached (cached mode).
  cache: Cache | None  # None: every call recomputes all content rows.
  tree: tree_lib.Tree | None = None  # "tree": the pending candidate tree for ranks n, n+1, ..


@flax.struct.dataclass
class Generation:
  """``tokens_BxL``: prompts with every real hidden position filled (padding untouched);
  ``num_calls_B``: network calls per row; ``num_generated_B``: tokens generated per row."""
  tokens_BxL: Array
  num_calls_B: Array
  num_generated_B: Array


def init_state(tokens_BxL: Array, visible_BxL: Array, order_BxL: Array, length_B: Array,
               rng: jax.Array, k: int = 1, vocab_size: int = 1,
               cache: Cache | None = None) -> State:
  """Rank-space state before any token is generated; positions ``>= length_B`` are padding.

  Padding is neither prompt nor target: it gets the ranks after every hidden position, so the
  masks keep every real row from attending to it.
  """
  batch, length = tokens_BxL.shape
  positions_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens_BxL.shape)
  real_BxL = positions_BxL < length_B[:, None]
  # Rank of every position under (order, position); padding keys sort after all of them.
  order_rank_BxL = jnp.argsort(jnp.lexsort((positions_BxL, order_BxL), axis=-1), axis=-1)
  key_BxL = jnp.where(real_BxL, order_rank_BxL, length + positions_BxL)
  sigma = ordering.make_ordering(visible_BxL & real_BxL, key_BxL)
  return State(tokens_rank_BxL=ordering.to_rank_space(tokens_BxL, sigma.perm_BxL),
               perm_BxL=sigma.perm_BxL, num_visible_B=sigma.num_visible_B,
               num_decoded_B=sigma.num_visible_B,
               num_target_B=real_BxL.sum(-1).astype(jnp.int32),
               num_calls_B=jnp.zeros((batch,), jnp.int32), rng=rng,
               drafts_BxK=jnp.zeros((batch, k), jnp.int32),
               logq_BxKxV=jnp.zeros((batch, k, vocab_size), jnp.float32),
               exact_first_B=jnp.ones((batch,), bool),
               num_cached_B=jnp.zeros((batch,), jnp.int32), cache=cache)


def _targets(first_B: Array, num_target_B: Array, num: int) -> tuple[Array, Array]:
  """Target ranks ``first..first+num-1`` (``B x num``) and whether each is a real hidden rank."""
  target_BxK = first_B[:, None] + jnp.arange(num, dtype=jnp.int32)
  return target_BxK, target_BxK < num_target_B[:, None]


def _network(model: nn.Module, params: Any, state: State, tokens_rank_BxL: Array,
             content_start_B: Array, num_content: int, target_BxK: Array, valid_BxK: Array,
             num_decoded: Array | None, temperature: float) -> tuple[Array, Cache | None]:
  """One network call: log-probs ``B x K x V`` of the target rows, and the updated cache.

  Cached: only content ranks ``content_start..content_start+num_content-1`` are computed.
  Uncached: every content row is, and the content arguments are ignored.
  """
  if state.cache is None:
    logits = forward.call(model, params, tokens_rank_BxL, state.perm_BxL, state.num_visible_B,
                          target_BxK, valid_BxK, num_decoded)
    cache = None
  else:
    content_rank_BxR = content_start_B[:, None] + jnp.arange(num_content, dtype=jnp.int32)
    logits, cache = forward.call(model, params, tokens_rank_BxL, state.perm_BxL,
                                 state.num_visible_B, target_BxK, valid_BxK, num_decoded,
                                 cache=state.cache, content_rank_BxR=content_rank_BxR)
  return distribution.log_probs(logits, model.num_special_tokens, temperature), cache


def draft_log_probs(model: nn.Module, params: Any, state: State, k: int,
                    temperature: float) -> Array:
  """Uncached draft call: ``log q_i`` (``B x k x V``) for ranks ``n..n+k-1``, given ranks ``< n``."""
  target_BxK, valid_BxK = _targets(state.num_decoded_B, state.num_target_B, k)
  return _network(model, params, state.replace(cache=None), state.tokens_rank_BxL,
                  state.num_decoded_B, 0, target_BxK, valid_BxK, state.num_decoded_B,
                  temperature)[0]


def _write(tokens_rank_BxL: Array, num_decoded_B: Array, new_BxC: Array,
           num_new_B: Array) -> Array:
  """Writes ``new_BxC[:, :num_new]`` at ranks ``n, n+1, ...``; every other rank is kept."""
  offset_BxL = jnp.arange(tokens_rank_BxL.shape[1], dtype=jnp.int32) - num_decoded_B[:, None]
  new_BxL = jnp.take_along_axis(new_BxC, jnp.clip(offset_BxL, 0, new_BxC.shape[1] - 1), 1)
  write_BxL = (offset_BxL >= 0) & (offset_BxL < num_new_B[:, None])
  return jnp.where(write_BxL, new_BxL, tokens_rank_BxL)


def _row(x_BxKxV: Array, index_B: Array) -> Array:
  """``x[b, index[b]]``, ``B x V``."""
  return jnp.take_along_axis(x_BxKxV, index_B[:, None, None], 1)[:, 0]


def verify(rng: jax.Array, logq_BxKxV: Array, logp_BxK1xV: Array, drafts_BxK: Array,
           num_valid_B: Array, has_bonus_B: Array, exact_first_B: Array) -> tuple[Array, Array]:
  """Speculative rejection sampling of ``k`` drafts against the density rows.

  Where ``exact_first_B``, draft 1 uses ``p_1 := q_1`` (same mask, so it is the exact
  conditional) and is always accepted. Draft ``i`` is accepted while
  ``u_i < min(1, p_i(x~_i) / q_i(x~_i))``; the first rejection ``j`` is replaced by a draw from
  ``norm(max(0, p_j - q_j))`` (``p_j`` if that has no mass). If every valid draft is accepted
  and ``has_bonus_B``, the bonus rank gets a draw from its ``p`` row. Returns the tokens for
  ranks ``n..n+k`` (``B x (k+1)``), how many of them to commit (``B``) and how many drafts
  were accepted (``B``).
  """
  batch, k = drafts_BxK.shape
  rng_accept, rng_residual, rng_bonus = jax.random.split(rng, 3)
  logp_BxKxV = logp_BxK1xV[:, :k]
  logp_BxKxV = logp_BxKxV.at[:, 0].set(
      jnp.where(exact_first_B[:, None], logq_BxKxV[:, 0], logp_BxKxV[:, 0]))
  logq_x_BxK = jnp.take_along_axis(logq_BxKxV, drafts_BxK[..., None], -1)[..., 0]
  logp_x_BxK = jnp.take_along_axis(logp_BxKxV, drafts_BxK[..., None], -1)[..., 0]
  u_BxK = jax.random.uniform(rng_accept, (batch, k))  # in [0, 1): ratio 1 always accepts.
  accept_BxK = u_BxK < jnp.exp(jnp.minimum(logp_x_BxK - logq_x_BxK, 0.0))
  accept_BxK &= jnp.arange(k) < num_valid_B[:, None]
  num_accepted_B = jnp.cumprod(accept_BxK, axis=1).sum(1).astype(jnp.int32)

  first_rejected_B = jnp.minimum(num_accepted_B, k - 1)
  p_BxV = jnp.exp(_row(logp_BxKxV, first_rejected_B))
  residual_BxV = jnp.maximum(p_BxV - jnp.exp(_row(logq_BxKxV, first_rejected_B)), 0.0)
  has_mass_Bx1 = residual_BxV.sum(-1, keepdims=True) > 0
  residual_BxV = jnp.where(has_mass_Bx1, residual_BxV, p_BxV)
  residual_B = jax.random.categorical(rng_residual, jnp.log(residual_BxV))
  bonus_B = jax.random.categorical(rng_bonus, logp_BxK1xV[:, k])

  rejected_B = num_accepted_B < num_valid_B
  fix_B = jnp.where(rejected_B, residual_B, bonus_B).astype(drafts_BxK.dtype)
  tokens_BxK1 = jnp.concatenate([drafts_BxK, fix_B[:, None]], axis=1)
  tokens_BxK1 = jnp.where(jnp.arange(k + 1) == num_accepted_B[:, None], fix_B[:, None],
                          tokens_BxK1)
  return tokens_BxK1, num_accepted_B + (rejected_B | has_bonus_B), num_accepted_B


def _sample(rng: jax.Array, logq_BxKxV: Array) -> Array:
  return jax.random.categorical(rng, logq_BxKxV).astype(jnp.int32)


def prefill(model: nn.Module, params: Any, state: State, k: int, temperature: float) -> State:
  """The first draft call: the whole prompt's content (cached, if caching) and the first block
  of ``k`` drafts, each given the prompt only."""
  rng, rng_draft = jax.random.split(state.rng)
  n_B = state.num_decoded_B
  target_BxK, valid_BxK = _targets(n_B, state.num_target_B, k)
  logq_BxKxV, cache = _network(model, params, state, state.tokens_rank_BxL,
                               jnp.zeros_like(n_B), state.tokens_rank_BxL.shape[1], target_BxK,
                               valid_BxK, n_B, temperature)
  return state.replace(drafts_BxK=_sample(rng_draft, logq_BxKxV), logq_BxKxV=logq_BxKxV,
                       exact_first_B=jnp.ones_like(n_B, bool), num_cached_B=n_B, cache=cache,
                       num_calls_B=state.num_calls_B + (n_B < state.num_target_B), rng=rng)


def _draft_next(model: nn.Module, params: Any, state: State, k: int, temperature: float,
                rng: jax.Array, num_content: int) -> State:
  """Draft call for the block after the committed ranks; caches the ``num_content`` ranks from
  ``num_cached`` on (the committed tokens not cached yet)."""
  n_B = state.num_decoded_B
  target_BxK, valid_BxK = _targets(n_B, state.num_target_B, k)
  logq_BxKxV, cache = _network(model, params, state, state.tokens_rank_BxL, state.num_cached_B,
                               num_content, target_BxK, valid_BxK, n_B, temperature)
  return state.replace(drafts_BxK=_sample(rng, logq_BxKxV), logq_BxKxV=logq_BxKxV,
                       exact_first_B=jnp.ones_like(n_B, bool), num_cached_B=n_B, cache=cache,
                       num_calls_B=state.num_calls_B + (n_B < state.num_target_B))


def _commit(state: State, tokens_BxC: Array, num_new_B: Array, num_cached_B: Array) -> State:
  return state.replace(
      tokens_rank_BxL=_write(state.tokens_rank_BxL, state.num_decoded_B, tokens_BxC, num_new_B),
      num_decoded_B=state.num_decoded_B + num_new_B, num_cached_B=num_cached_B)


def sample_round(model: nn.Module, params: Any, state: State, k: int, method: str,
                 temperature: float) -> State:
  """One round for every row; finished rows are left unchanged."""
  rng, rng_draft, rng_verify = jax.random.split(state.rng, 3)
  n_B = state.num_decoded_B
  target_BxK, valid_BxK = _targets(n_B, state.num_target_B, k)
  num_valid_B = valid_BxK.sum(-1).astype(jnp.int32)
  has_bonus_B = target_BxK[:, -1] + 1 < state.num_target_B

  if method in ("sequential", "parallel"):  # commit the block, draft the next one
    state = _commit(state, state.drafts_BxK, num_valid_B, state.num_cached_B)
    return _draft_next(model, params, state, k, temperature, rng_draft, k).replace(rng=rng)

  drafted_rank_BxL = _write(state.tokens_rank_BxL, n_B, state.drafts_BxK, num_valid_B)
  if method == "assd":
    # Density call: the pending drafts' content (ranks n..n+k-1, cached from n) and k+1 rows.
    target_BxK1, valid_BxK1 = _targets(n_B, state.num_target_B, k + 1)
    logp_BxK1xV, cache = _network(model, params, state, drafted_rank_BxL, n_B, k, target_BxK1,
                                  valid_BxK1, None, temperature)
    tokens_BxK1, num_new_B, num_accepted_B = verify(
        rng_verify, state.logq_BxKxV, logp_BxK1xV, state.drafts_BxK, num_valid_B, has_bonus_B,
        state.exact_first_B)
    state = state.replace(cache=cache, num_calls_B=state.num_calls_B + (num_valid_B >= 2))
    state = _commit(state, tokens_BxK1, num_new_B, n_B + num_accepted_B)
    return _draft_next(model, params, state, k, temperature, rng_draft, 1).replace(rng=rng)

  # assd_fused. Content rows: the uncached residual/bonus rank (num_cached = n - 1, or n after
  # the prefill) and the drafts. Query rows: k + 1 density rows, then for each acceptance
  # length a = 0..k the k draft rows of ranks n+a+1.. given ranks < n+a.
  a_A = jnp.arange(k + 1, dtype=jnp.int32)
  next_first_BxA = n_B[:, None] + a_A + 1
  draft_target_BxAK = (next_first_BxA[:, :, None] + jnp.arange(k, dtype=jnp.int32)).reshape(
      n_B.shape[0], -1)
  target_BxK1, valid_BxK1 = _targets(n_B, state.num_target_B, k + 1)
  all_target = jnp.concatenate([target_BxK1, draft_target_BxAK], 1)
  all_valid = jnp.concatenate(
      [valid_BxK1, draft_target_BxAK < state.num_target_B[:, None]], 1)
  limit = jnp.concatenate([jnp.full_like(target_BxK1, state.tokens_rank_BxL.shape[1]),
                           jnp.repeat(n_B[:, None] + a_A, k, axis=1)], 1)
  logp_BxTxV, cache = _network(model, params, state, drafted_rank_BxL, state.num_cached_B,
                               k + 1, all_target, all_valid, limit, temperature)
  tokens_BxK1, num_new_B, num_accepted_B = verify(
      rng_verify, state.logq_BxKxV, logp_BxTxV[:, :k + 1], state.drafts_BxK, num_valid_B,
      has_bonus_B, state.exact_first_B)
  logq_next_BxAxKxV = logp_BxTxV[:, k + 1:].reshape(
      (n_B.shape[0], k + 1, k) + logp_BxTxV.shape[2:])
  logq_next_BxKxV = jnp.take_along_axis(logq_next_BxAxKxV, num_accepted_B[:, None, None, None],
                                        1)[:, 0]
  needed_B = (n_B < state.num_target_B) & ~(state.exact_first_B & (num_valid_B == 1))
  state = state.replace(cache=cache, num_calls_B=state.num_calls_B + needed_B,
                        drafts_BxK=_sample(rng_draft, logq_next_BxKxV),
                        logq_BxKxV=logq_next_BxKxV, exact_first_B=jnp.zeros_like(needed_B),
                        rng=rng)
  return _commit(state, tokens_BxK1, num_new_B, n_B + num_accepted_B)


def _tree_cache(model: nn.Module, state: State, num_nodes: int) -> Cache:
  """The cache a tree call writes into: the carried one, or (uncached) a fresh one of
  ``L + N`` slots, the last ``N`` for the tree's nodes."""
  batch, length = state.tokens_rank_BxL.shape
  return state.cache if state.cache is not None else model.init_cache(batch, length + num_nodes)


def _propose(state: State, logq_BxDxV: Array, num_nodes: int, ngram: int) -> tree_lib.Tree:
  """The next tree, for the ranks from ``num_decoded`` on: ``D`` proposal rows plus (if
  ``ngram``) a prompt-lookup chain over the visible and committed tokens."""
  n_B, perm_BxL = state.num_decoded_B, state.perm_BxL
  chain = None
  if ngram:
    known_rank_BxL = jnp.arange(perm_BxL.shape[1]) < n_B[:, None]
    chain = tree_lib.ngram_chain(
        ordering.to_position_space(state.tokens_rank_BxL, perm_BxL),
        ordering.to_position_space(known_rank_BxL, perm_BxL), perm_BxL, n_B,
        state.num_target_B, logq_BxDxV.shape[1], ngram)
  return tree_lib.build(logq_BxDxV, chain, num_nodes, n_B, state.num_target_B)


def _proposal_temperature(temperature: Array) -> Array:
  """Trees are shaped by the tempered proposals; the greedy limit uses ``T = 1`` for that."""
  return jnp.where(temperature > 0, temperature, 1.0)


def tree_prefill(model: nn.Module, params: Any, state: State, num_nodes: int, depth: int,
                 ngram: int, temperature: Array) -> State:
  """The first tree-decoding call: the prompt's content, the exact conditional of rank ``m``
  (drawn and committed, so the call pays for itself) and ``D`` draft rows for the ranks after
  it, which propose the first tree."""
  rng, rng_draw = jax.random.split(state.rng)
  batch, length = state.tokens_rank_BxL.shape
  n_B = state.num_decoded_B
  target_BxK, valid_BxK = _targets(n_B, state.num_target_B, depth + 1)
  logits_BxKxV, cache = forward.call(
      model, params, state.tokens_rank_BxL, state.perm_BxL, state.num_visible_B, target_BxK,
      valid_BxK, n_B, cache=_tree_cache(model, state, num_nodes),
      content_rank_BxR=jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)))
  token_B = _sample(rng_draw, distribution.log_probs(logits_BxKxV[:, 0],
                                                     model.num_special_tokens, temperature))
  live_B = n_B < state.num_target_B
  state = state.replace(cache=None if state.cache is None else cache, rng=rng,
                        num_calls_B=state.num_calls_B + live_B)
  state = _commit(state, token_B[:, None], live_B.astype(jnp.int32), n_B)
  logq_BxDxV = distribution.log_probs(logits_BxKxV[:, 1:], model.num_special_tokens,
                                      _proposal_temperature(temperature))
  return state.replace(tree=_propose(state, logq_BxDxV, num_nodes, ngram))


def _adopt_path(cache: Cache, path_BxD: Array, n_B: Array, length: int) -> Cache:
  """Copies the walked path's keys and values from their node slots ``L + u`` to their ranks
  ``n, n+1, ..``: a node's content row saw exactly the committed prefix and its path, so it is
  the content that rank would get when decoded one token at a time."""
  rows_Bx1 = jnp.arange(path_BxD.shape[0])[:, None]
  num_slots = cache.positions_BxS.shape[1]
  dst_BxD = jnp.where(path_BxD >= 0, n_B[:, None] + jnp.arange(path_BxD.shape[1]), num_slots)
  src_BxD = length + jnp.maximum(path_BxD, 0)
  return jax.tree.map(lambda x: x.at[rows_Bx1, dst_BxD].set(x[rows_Bx1, src_BxD], mode="drop"),
                      cache)


def tree_call(model: nn.Module, params: Any, state: State, num_nodes: int,
              depth: int) -> tuple[Array, Cache]:
  """The network call of a tree round: logits ``B x (N+1) x (D+1) x V`` and the cache.

  Content rows: the committed rank not cached yet (cached; every rank uncached) and the
  pending tree's ``N`` nodes. Query rows, for the root (index 0) and each node ``u`` (index
  ``1 + u``), all seeing the committed prefix plus that node's path: the exact conditional of
  the next rank (row 0) and ``D`` draft rows for the ranks after it (rows ``1..D``).
  """
  tree = state.tree
  batch, length = state.tokens_rank_BxL.shape
  n_B, num_target_B = state.num_decoded_B, state.num_target_B
  first_BxN1 = jnp.concatenate([n_B[:, None], n_B[:, None] + tree.depth_BxN + 1], 1)
  target_BxN1xD1 = first_BxN1[:, :, None] + jnp.arange(depth + 1, dtype=jnp.int32)
  valid_BxN1xD1 = (jnp.concatenate([jnp.ones((batch, 1), bool), tree.valid_BxN], 1)[:, :, None]
                   & (target_BxN1xD1 < num_target_B[:, None, None]))
  node_BxN1xD1 = jnp.broadcast_to(jnp.arange(-1, num_nodes, dtype=jnp.int32)[None, :, None],
                                  target_BxN1xD1.shape)
  rows = forward.TreeRows(tree.tokens_BxN, n_B[:, None] + tree.depth_BxN,
                          tree_lib.ancestors(tree, depth), node_BxN1xD1.reshape(batch, -1))
  content_rank_BxR = (state.num_cached_B[:, None] if state.cache is not None else
                      jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)))
  logits, cache = forward.call(
      model, params, state.tokens_rank_BxL, state.perm_BxL, state.num_visible_B,
      target_BxN1xD1.reshape(batch, -1), valid_BxN1xD1.reshape(batch, -1), n_B,
      cache=_tree_cache(model, state, num_nodes), content_rank_BxR=content_rank_BxR, tree=rows)
  return logits.reshape(batch, num_nodes + 1, depth + 1, -1), cache


def tree_round(model: nn.Module, params: Any, state: State, num_nodes: int, depth: int,
               ngram: int, temperature: Array) -> State:
  """One call of exact tree decoding for every row; finished rows are left unchanged.

  Every exact row (:func:`tree_call`) gets a fresh draw; the walk commits the path it follows
  and the first draw off the tree; the stop node's draft rows propose the next tree.
  """
  rng, rng_draw = jax.random.split(state.rng)
  tree, n_B, num_target_B = state.tree, state.num_decoded_B, state.num_target_B
  logits_BxN1xD1xV, cache = tree_call(model, params, state, num_nodes, depth)
  draws_BxN1 = _sample(rng_draw, distribution.log_probs(
      logits_BxN1xD1xV[:, :, 0], model.num_special_tokens, temperature))
  path_BxD, num_path_B, stop_B, last_B = tree_lib.walk(tree, draws_BxN1, depth)
  live_B = n_B < num_target_B
  num_new_B = jnp.where(live_B, num_path_B + (n_B + num_path_B < num_target_B), 0)
  path_tokens_BxD = jnp.take_along_axis(tree.tokens_BxN, jnp.maximum(path_BxD, 0), 1)
  tokens_BxD1 = jnp.where(jnp.arange(depth + 1) == num_path_B[:, None], last_B[:, None],
                          jnp.pad(path_tokens_BxD, ((0, 0), (0, 1))))
  proposal_BxDxV = jnp.take_along_axis(logits_BxN1xD1xV, (stop_B + 1)[:, None, None, None],
                                       1)[:, 0, 1:]
  if state.cache is not None:
    cache = _adopt_path(cache, path_BxD, n_B, state.tokens_rank_BxL.shape[1])
  state = state.replace(cache=None if state.cache is None else cache, rng=rng,
                        num_calls_B=state.num_calls_B + live_B)
  state = _commit(state, tokens_BxD1, num_new_B, n_B + num_path_B)
  logq_BxDxV = distribution.log_probs(proposal_BxDxV, model.num_special_tokens,
                                      _proposal_temperature(temperature))
  return state.replace(tree=_propose(state, logq_BxDxV, num_nodes, ngram))


def _loop(model: nn.Module, method: str, k: int, depth: int, ngram: int, use_cache: bool,
          params: Any, tokens_BxL: Array, visible_BxL: Array, order_BxL: Array,
          length_B: Array, rng: jax.Array, temperature: Array) -> Generation:
  """Prefill, then rounds until every row is finished (a ``lax.while_loop``; no host sync).

  ``k`` is the block size, or the tree's node budget ``N`` for ``method="tree"``.
  """
  batch, length = tokens_BxL.shape
  if method == "tree":
    cache = model.init_cache(batch, length + k) if use_cache else None
    state = init_state(tokens_BxL, visible_BxL, order_BxL, length_B, rng, 1, 1, cache)
    state = tree_prefill(model, params, state, k, depth, ngram, temperature)
    round_fn = lambda s: tree_round(model, params, s, k, depth, ngram, temperature)
  else:
    cache = model.init_cache(batch, length) if use_cache else None
    state = init_state(tokens_BxL, visible_BxL, order_BxL, length_B, rng, k, model.vocab_size,
                       cache)
    state = prefill(model, params, state, k, temperature)
    round_fn = lambda s: sample_round(model, params, s, k, method, temperature)
  state = jax.lax.while_loop(lambda s: jnp.any(s.num_decoded_B < s.num_target_B), round_fn,
                             state)
  return Generation(tokens_BxL=ordering.to_position_space(state.tokens_rank_BxL, state.perm_BxL),
                    num_calls_B=state.num_calls_B,
                    num_generated_B=state.num_target_B - state.num_visible_B)


_serial = itertools.count()


@functools.lru_cache(maxsize=64)
def _compiled(model: nn.Module, method: str, k: int, depth: int, ngram: int, use_cache: bool,
              signature: Any) -> Callable[..., Generation]:
  """The jitted loop of one configuration; ``signature`` (shapes and dtypes of the arguments)
  is in the key so that the loop is traced exactly once per entry, which chex asserts. The
  temperature is a traced argument: changing it never recompiles."""

  def loop(params, tokens_BxL, visible_BxL, order_BxL, length_B, rng, temperature):
    params = models.compute_params(model, params)  # once, not in every call of the loop
    return _loop(model, method, k, depth, ngram, use_cache, params, tokens_BxL, visible_BxL,
                 order_BxL, length_B, rng, temperature)

  # chex keys its trace counter on the function's name: give each entry its own counter.
  loop.__name__ = f"sample_{method}_k{k}_{next(_serial)}"
  return jax.jit(chex.assert_max_traces(loop, n=1))


def _signature(tree: Any) -> Any:
  """Hashable tree structure, shapes, dtypes and shardings: what decides a compilation."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((jnp.shape(x), jnp.result_type(x), getattr(x, "weak_type", False),
                         getattr(x, "sharding", None)) for x in leaves)


def _check(name: str, x: Any, shape: tuple[int, ...], kinds: str, what: str) -> Array:
  x = jnp.asarray(x)
  if x.shape != shape:
    raise ValueError(f"{name} has shape {x.shape}; expected {shape}.")
  if np.dtype(x.dtype).kind not in kinds:
    raise ValueError(f"{name} has dtype {x.dtype}; expected {what}.")
  return x


def _positive_int(name: str, value: Any, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name}={value!r}; expected an int >= {low}.")


def generate(model: nn.Module, params: Any, tokens_BxL: Array, visible_BxL: Array,
             rng: jax.Array, *, method: str = "assd", k: int = 5, temperature: float = 1.0,
             depth: int = 6, ngram: int = 2, order_BxL: Array | None = None,
             length_B: Array | None = None, cache: bool = True) -> Generation:
  """Fills every hidden, non-padding position of ``tokens_BxL``.

  Args:
    tokens_BxL: int tokens; values at hidden positions are ignored.
    visible_BxL: bool, True on the prompt (kept unchanged).
    rng: a PRNG key (typed or raw ``uint32[2]``).
    method: ``"sequential"`` (1 token per call), ``"parallel"`` (k independent tokens per call,
      not exact), ``"assd"`` (k drafts and a draft + a density call per round, exact),
      ``"assd_fused"`` (one call per round that verifies the block and drafts the next, exact),
      ``"tree"`` (one call per round walks a tree of ``k`` candidates with exact draws,
      exact) or ``"auto"`` (the fastest exact method and size for this batch size, visible
      fraction and temperature, from the table measured by ``benchmarks/sampling_speed.py``;
      ``k``, ``depth`` and ``ngram`` are then taken from the table).
    k: drafts per round (``parallel``, ``assd``, ``assd_fused``) or the tree's node budget N
      (at most ``masks.MAX_TREE_NODES`` = 64).
    temperature: divides the logits of every draw (drafts and targets alike); ``0`` is greedy
      decoding (every exact method then returns sequential greedy decoding's tokens).
    depth: the tree's depth D: draft rows per node, and at most D + 1 tokens per call (tree).
    ngram: the prompt-lookup match length that adds a candidate chain to the tree; 0 is off.
    order_BxL: optional generation keys of the hidden positions (smaller first, ties by
      position); default left to right.
    length_B: optional real lengths; positions ``>= length_B`` are padding: never generated,
      never attended to by real positions, returned unchanged.
    cache: keep a KV cache of the content stream (same distribution, much less compute).

  Returns:
    :class:`Generation` with ``tokens_BxL`` (``B x L``), ``num_calls_B`` and ``num_generated_B``.
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}; expected one of {METHODS}.")
  _positive_int("k", k, 1)
  if method == "tree" and k > masks.MAX_TREE_NODES:
    raise ValueError(f"k={k}: a tree has at most {masks.MAX_TREE_NODES} nodes.")
  _positive_int("depth", depth, 1 if method == "tree" else 0)
  _positive_int("ngram", ngram, 0)
  if (isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number))
      or not np.isfinite(temperature) or temperature < 0):
    raise ValueError(f"temperature={temperature!r}; expected a finite number >= 0.")
  tokens_BxL = jnp.asarray(tokens_BxL)
  if tokens_BxL.ndim != 2:
    raise ValueError(f"tokens_BxL has shape {tokens_BxL.shape}; expected (batch, length).")
  shape = tokens_BxL.shape
  tokens_BxL = _check("tokens_BxL", tokens_BxL, shape, "iu", "an integer dtype")
  visible_BxL = _check("visible_BxL", visible_BxL, shape, "b", "bool")
  order_BxL = (jnp.zeros(shape, jnp.float32) if order_BxL is None else
               _check("order_BxL", order_BxL, shape, "iuf", "an integer or float dtype"))
  length_B = (jnp.full(shape[:1], shape[1], jnp.int32) if length_B is None else
              _check("length_B", length_B, shape[:1], "iu", "an integer dtype"))
  rng = jnp.asarray(rng)
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  if method == "auto":
    real_BxL = np.arange(shape[1]) < np.asarray(length_B)[:, None]
    fraction = float((np.asarray(visible_BxL) & real_BxL).sum() / max(real_BxL.sum(), 1))
    method, k, depth, ngram = auto.choose(shape[0], fraction, float(temperature))
  if method == "sequential" or (k == 1 and method in ("assd", "parallel")):
    method, k = "sequential", 1  # the same round at k = 1: commit the exact first draft.
  if method != "tree":
    depth, ngram = 0, 0  # not used: one compiled entry whatever their values
  order_dtype = jnp.float32 if np.dtype(order_BxL.dtype).kind == "f" else jnp.int32
  args = (params, tokens_BxL.astype(jnp.int32), visible_BxL, order_BxL.astype(order_dtype),
          length_B.astype(jnp.int32), rng, jnp.float32(temperature))
  return _compiled(model, method, int(k), int(depth), int(ngram), bool(cache),
                   _signature(args))(*args)
