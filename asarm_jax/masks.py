"""The one attention-mask builder of asarm_jax.

Every mask is a function of *ranks*: a position's place in the generation order sigma. The
visible prompt holds the ranks ``< m`` (``m = num_visible``); hidden positions are generated in
rank order. Training, density evaluation, drafting and (cached) decoding all call the two
functions below; they differ only in which rows they ask for and in ``num_decoded``.

Rules (``r`` is a row's rank, ``s`` a key's rank):

* content stream: ``s <= max(r, m - 1)``. The prompt attends bidirectionally within itself and
  a generated token sees the prompt, the sigma-earlier tokens and itself. With
  ``causal_prompt=True`` it is ``s <= r`` (a sigma-GPT style causal prompt, for ablations).
* query stream, row for a target of rank ``t``: ``s < min(t, n)`` with ``n = num_decoded``.
  With ``n >= L`` (density, training) this is the strictly causal "sigma-earlier" rule. With
  ``n`` = the number of decoded tokens it is the *draft* rule: every undecoded position is hidden
  from every target, which gives the conditionally independent marginals p(x_j | decoded).

* tree rule, for a call that evaluates a *tree* of candidate continuations (tree decoding):
  siblings share a rank, so tree nodes live in extra key slots, and a row that belongs to
  node ``u`` may also see the slots of ``u``'s ancestors and of ``u`` itself
  (:func:`tree_mask`, OR-ed with the rank rules above at the limit ``n``).

In rank space (rows gathered into generation order, ``rank = arange(L)``) the content mask is a
prefix-LM mask and the query mask is strictly causal. The functions also take arbitrary ranks,
so the same code builds masks in position space (tests) and over a rank-indexed KV cache.
"""
from __future__ import annotations

import jax.numpy as jnp

Array = jnp.ndarray


def content_mask(row_rank_BxR: Array, key_rank_BxS: Array, num_visible_B: Array,
                 causal_prompt: bool = False) -> Array:
  """Content-stream mask, bool ``B x R x S``: may row ``r`` attend to key ``s``."""
  row = row_rank_BxR[:, :, None]
  if not causal_prompt:
    row = jnp.maximum(row, num_visible_B[:, None, None] - 1)
  return key_rank_BxS[:, None, :] <= row


def query_mask(target_rank_BxK: Array, target_valid_BxK: Array, key_rank_BxS: Array,
               num_decoded: Array | None = None) -> Array:
  """Query-stream mask, bool ``B x K x S``.

  The row for a target of rank ``t`` sees the content of ranks ``< min(t, num_decoded)`` and
  never its own token. ``num_decoded`` is per row (``B``) or per target (``B x K``: the fused
  ASSD call drafts for several hypothetical prefixes at once). Invalid rows (``target_valid``
  False: padding of the fixed K) see nothing; the model's attention sink keeps their softmax
  finite.
  """
  limit = target_rank_BxK
  if num_decoded is not None:
    limit = jnp.minimum(limit, num_decoded if num_decoded.ndim == 2 else num_decoded[:, None])
  visible = key_rank_BxS[:, None, :] < limit[:, :, None]
  return visible & target_valid_BxK[:, :, None]


def tree_mask(row_node_BxR: Array, ancestors_BxNxN: Array, key_node_BxS: Array) -> Array:
  """Tree-attention mask, bool ``B x R x S``: may a row of node ``u`` see the key of node ``v``.

  ``row_node_BxR`` is each row's node (``-1``: none, e.g. the root of the tree, which is the
  committed prefix); ``key_node_BxS`` is each key slot's node (``-1``: a rank slot, governed by
  the rank rules); ``ancestors_BxNxN[b, u, v]`` says that ``v`` is ``u`` or an ancestor of ``u``.
  """
  num_nodes = ancestors_BxNxN.shape[-1]
  rows_BxRxN = jnp.take_along_axis(ancestors_BxNxN,
                                   jnp.clip(row_node_BxR, 0, num_nodes - 1)[..., None], 1)
  rows_BxRxN &= (row_node_BxR >= 0)[..., None]
  keys_BxRxS = jnp.take_along_axis(
      rows_BxRxN, jnp.broadcast_to(jnp.clip(key_node_BxS, 0, num_nodes - 1)[:, None, :],
                                   rows_BxRxN.shape[:2] + key_node_BxS.shape[1:]), 2)
  return keys_BxRxS & (key_node_BxS >= 0)[:, None, :]
