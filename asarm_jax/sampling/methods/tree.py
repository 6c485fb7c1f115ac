"""``tree``: exact tree decoding, one call per round.

The carry is a candidate tree (:mod:`asarm_jax.sampling.candidate_tree`) of ``N =
spec.num_nodes`` nodes for the ranks from ``n`` on. One call (:func:`call`) gives, for the
root and every node, the exact conditional of the next rank given that path and ``D =
spec.depth`` draft rows for the ranks after it; the walk commits the path it follows and the
first draw off the tree, and the stop node's draft rows propose the next tree. Every draw is
exact, so no rejection step is needed; one call is counted per round for every live row.

The cache has ``L + N`` slots, the last ``N`` for the nodes; after a round the walked path's
keys and values are copied to their ranks (:func:`_adopt_path`). Uncached, every call gets a
fresh cache of ``L + N`` slots and recomputes every rank.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from asarm_jax import forward, ordering
from asarm_jax.sampling import candidate_tree
from asarm_jax.sampling import state as state_lib
from asarm_jax.sampling.network import Network
from asarm_jax.sampling.spec import SamplerSpec
from asarm_jax.sampling.state import State

Array = jnp.ndarray


def _call_cache(net: Network, state: State, num_nodes: int) -> Any:
  """The cache a call writes into: the carried one, or (uncached) a fresh one of ``L + N``
  slots."""
  batch, length = state.tokens_rank_BxL.shape
  return state.cache if state.cache is not None else net.init_cache(batch, length + num_nodes)


def _propose(spec: SamplerSpec, state: State, logq_BxDxV: Array) -> candidate_tree.Tree:
  """The next tree, for the ranks from ``num_decoded`` on: ``D`` proposal rows plus (if
  ``ngram``) a prompt-lookup chain over the visible and committed tokens."""
  n_B, perm_BxL = state.num_decoded_B, state.perm_BxL
  chain = None
  if spec.ngram:
    known_rank_BxL = jnp.arange(perm_BxL.shape[1]) < n_B[:, None]
    chain = candidate_tree.ngram_chain(
        ordering.to_position_space(state.tokens_rank_BxL, perm_BxL),
        ordering.to_position_space(known_rank_BxL, perm_BxL), perm_BxL, n_B,
        state.num_target_B, logq_BxDxV.shape[1], spec.ngram)
  return candidate_tree.build(logq_BxDxV, chain, spec.num_nodes, n_B, state.num_target_B)


def _proposal_log_probs(net: Network, logits_BxDxV: Array, temperature: Array) -> Array:
  """Trees are shaped by the tempered proposals; the greedy limit uses ``T = 1`` for that."""
  return net.log_probs(logits_BxDxV, jnp.where(temperature > 0, temperature, 1.0))


CALLS_PER_ROUND = 1  # network calls of one round, for the whole batch

def init(net: Network, params: Any, spec: SamplerSpec, state: State, use_cache: bool) -> State:
  """The first call: the prompt's content, the exact conditional of rank ``m`` (drawn and
  committed, so the call pays for itself) and ``D`` draft rows for the ranks after it, which
  propose the first tree."""
  rng_B, rng_draw_B = state_lib.split(state.rng_B, 2)
  batch, length = state.tokens_rank_BxL.shape
  n_B = state.num_decoded_B
  state = state.replace(
      cache=net.init_cache(batch, length + spec.num_nodes) if use_cache else None)
  target_BxK, valid_BxK = state_lib.targets(n_B, state.num_target_B, spec.depth + 1)
  logits_BxKxV, cache = net(
      params, state.tokens_rank_BxL, state.perm_BxL, state.num_visible_B, target_BxK,
      valid_BxK, n_B, cache=_call_cache(net, state, spec.num_nodes),
      content_rank_BxR=jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)))
  token_B = state_lib.draw(rng_draw_B, state_lib.log_probs(net, params, state,
                                                           logits_BxKxV[:, 0], head=False))
  live_B = state_lib.live(state)
  state = state.replace(cache=cache if use_cache else None, rng_B=rng_B,
                        num_calls_B=state.num_calls_B + live_B)
  state = state_lib.commit(state, token_B[:, None], live_B.astype(jnp.int32), n_B)
  logq_BxDxV = _proposal_log_probs(net, logits_BxKxV[:, 1:], state.temperature)
  return state.replace(carry=_propose(spec, state, logq_BxDxV))


def _adopt_path(cache: Any, path_BxD: Array, n_B: Array, length: int) -> Any:
  """Copies the walked path's keys and values from their node slots ``L + u`` to their ranks
  ``n, n+1, ..``: a node's content row saw exactly the committed prefix and its path, so it is
  the content that rank would get when decoded one token at a time."""
  rows_Bx1 = jnp.arange(path_BxD.shape[0])[:, None]
  num_slots = jax.tree.leaves(cache)[0].shape[1]
  dst_BxD = jnp.where(path_BxD >= 0, n_B[:, None] + jnp.arange(path_BxD.shape[1]), num_slots)
  src_BxD = length + jnp.maximum(path_BxD, 0)
  return jax.tree.map(lambda x: x.at[rows_Bx1, dst_BxD].set(x[rows_Bx1, src_BxD], mode="drop"),
                      cache)


def call(net: Network, params: Any, spec: SamplerSpec, state: State,
         head: bool = True) -> tuple[Array, Any]:
  """The network call of a round: logits ``B x (N+1) x (D+1) x V`` (``head=False``: the
  features ``B x (N+1) x (D+1) x F`` that ``net.head`` turns into them) and the cache.

  Content rows: the committed rank not cached yet (cached; every rank uncached) and the
  pending tree's ``N`` nodes. Query rows, for the root (index 0) and each node ``u`` (index
  ``1 + u``), all seeing the committed prefix plus that node's path: the exact conditional of
  the next rank (row 0) and ``D`` draft rows for the ranks after it (rows ``1..D``).
  """
  tree, num_nodes, depth = state.carry, spec.num_nodes, spec.depth
  batch, length = state.tokens_rank_BxL.shape
  n_B, num_target_B = state.num_decoded_B, state.num_target_B
  first_BxN1 = jnp.concatenate([n_B[:, None], n_B[:, None] + tree.depth_BxN + 1], 1)
  target_BxN1xD1 = first_BxN1[:, :, None] + jnp.arange(depth + 1, dtype=jnp.int32)
  valid_BxN1xD1 = (jnp.concatenate([jnp.ones((batch, 1), bool), tree.valid_BxN], 1)[:, :, None]
                   & (target_BxN1xD1 < num_target_B[:, None, None]))
  node_BxN1xD1 = jnp.broadcast_to(jnp.arange(-1, num_nodes, dtype=jnp.int32)[None, :, None],
                                  target_BxN1xD1.shape)
  rows = forward.TreeRows(tree.tokens_BxN, n_B[:, None] + tree.depth_BxN,
                          candidate_tree.ancestors(tree, depth), node_BxN1xD1.reshape(batch, -1))
  content_rank_BxR = (state.num_cached_B[:, None] if state.cache is not None else
                      jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)))
  out, cache = net(
      params, state.tokens_rank_BxL, state.perm_BxL, state.num_visible_B,
      target_BxN1xD1.reshape(batch, -1), valid_BxN1xD1.reshape(batch, -1), n_B,
      cache=_call_cache(net, state, num_nodes), content_rank_BxR=content_rank_BxR, tree=rows,
      head=head)
  return out.reshape(batch, num_nodes + 1, depth + 1, -1), cache


def round(net: Network, params: Any, spec: SamplerSpec, state: State) -> State:
  """Every exact row of :func:`call` gets a fresh draw; the walk commits the path it follows
  and the first draw off the tree; the stop node's draft rows propose the next tree.

  The head (and the log-softmax) runs on the rows used only: the ``N + 1`` exact rows, then
  the stop node's ``D`` draft rows, not all ``(N + 1)(D + 1)``.
  """
  rng_B, rng_draw_B = state_lib.split(state.rng_B, 2)
  tree, n_B, depth = state.carry, state.num_decoded_B, spec.depth
  features_BxN1xD1xF, cache = call(net, params, spec, state, head=False)
  draws_BxN1 = state_lib.draw(rng_draw_B, state_lib.log_probs(net, params, state,
                                                              features_BxN1xD1xF[:, :, 0]))
  path_BxD, num_path_B, stop_B, last_B = candidate_tree.walk(tree, draws_BxN1, depth)
  live_B = state_lib.live(state)
  num_new_B = jnp.where(live_B, num_path_B + (n_B + num_path_B < state.num_target_B), 0)
  path_tokens_BxD = jnp.take_along_axis(tree.tokens_BxN, jnp.maximum(path_BxD, 0), 1)
  tokens_BxD1 = jnp.where(jnp.arange(depth + 1) == num_path_B[:, None], last_B[:, None],
                          jnp.pad(path_tokens_BxD, ((0, 0), (0, 1))))
  proposal_BxDxF = jnp.take_along_axis(features_BxN1xD1xF, (stop_B + 1)[:, None, None, None],
                                       1)[:, 0, 1:]
  if state.cache is not None:
    cache = _adopt_path(cache, path_BxD, n_B, state.tokens_rank_BxL.shape[1])
  state = state.replace(cache=None if state.cache is None else cache, rng_B=rng_B,
                        num_calls_B=state.num_calls_B + live_B)
  state = state_lib.commit(state, tokens_BxD1, num_new_B, n_B + num_path_B)
  logq_BxDxV = _proposal_log_probs(net, net.head(params, proposal_BxDxF), state.temperature)
  return state.replace(carry=_propose(spec, state, logq_BxDxV))
