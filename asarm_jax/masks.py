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
  (:func:`node_bits`, OR-ed with the rank rules above at the limit ``n``).

Every rule is "key rank < a per-row limit", plus, for tree rows, a per-row set of tree nodes.
So a mask is never built densely on the fast path: :class:`Visibility` holds one integer limit
per row and one rank per key (and the tree's node bitsets), and the attention kernel derives
each score's visibility from them (:mod:`asarm_jax.models.attention`). :func:`dense` expands it
into the ``B x T x S`` boolean mask, for the reference (XLA) attention and for tests. Keys may
carry any ranks, so the same code builds masks in position space (tests) and over a
rank-indexed KV cache (key rank = slot).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jnp.ndarray

MAX_TREE_NODES = 64  # node bitsets are two 32-bit words


class Tail(NamedTuple):
  """A tree call's rows as row groups that see their keys in rank order (batch-invariant calls).

  A tree row sees the committed ranks and its node's path, whose keys sit in node slots after
  the ranks' slots; a kernel that adds keys up in slot order would then add them up in another
  order than a call without a tree does for the same row. So the rows are split into groups,
  the root's (rows that see no node) and one per node (its content row and its query rows), and
  each group gets a *tail* of ``W`` keys for the ranks ``base .. base + W - 1``: the committed
  ranks' keys from their slots, the path's from their node slots, each at its rank's column.
  A group's rows read the keys of ranks ``< base`` from the cache and then its tail: every row
  meets its keys in rank order, in the same blocks as without a tree.

  Attributes:
    group_rows_GxP: int32 rows (indices into ``T``) of each group; every row is in one group.
    base_B: int32 first rank of the tails (a multiple of the kernel's key block).
    slot_BxGxW: int32 cache slot of each tail column's key (any slot where it has none).
    rank_BxGxW: int32 rank of each tail column, ``2^31 - 1`` where the group has no such key.
    row_limit_BxT: int32 each row's limit within its tail (its path's ranks included).
  """
  group_rows_GxP: Array
  base_B: Array
  slot_BxGxW: Array
  rank_BxGxW: Array
  row_limit_BxT: Array


class Visibility(NamedTuple):
  """Which keys each row may attend to, in structured form.

  Row ``r`` sees key ``s`` iff ``key_rank[s] < row_limit[r]``, or key ``s`` holds tree node
  ``u = key_node[s] >= 0`` and bit ``u`` of ``row_nodes[r]`` is set.

  Attributes:
    row_limit_BxT: int32 rank limit of every row (content rows first, then query rows).
    key_rank_BxS: int32 rank of every key (a KV cache's slot index; tree slots get ranks that
      no limit reaches).
    row_nodes_BxTx2: optional int32 bitsets (two words: nodes 0-31, 32-63) of the tree nodes
      each row sees, from :func:`node_bits`.
    key_node_BxS: optional int32 tree node of every key (``-1``: a rank key).
    tail: optional :class:`Tail`, the same visibility in rank order (batch-invariant tree
      calls; the fused kernel reads it instead of the node bitsets).
  """
  row_limit_BxT: Array
  key_rank_BxS: Array
  row_nodes_BxTx2: Array | None = None
  key_node_BxS: Array | None = None
  tail: Tail | None = None


def content_limit(row_rank_BxR: Array, num_visible_B: Array, causal_prompt: bool = False) -> Array:
  """Content-stream limits, int32 ``B x R``: row ``r`` sees ranks ``s <= max(r, m - 1)``."""
  row = row_rank_BxR
  if not causal_prompt:
    row = jnp.maximum(row, num_visible_B[:, None] - 1)
  return (row + 1).astype(jnp.int32)


def query_limit(target_rank_BxK: Array, target_valid_BxK: Array,
                num_decoded: Array | None = None) -> Array:
  """Query-stream limits, int32 ``B x K``.

  The row for a target of rank ``t`` sees the content of ranks ``< min(t, num_decoded)`` and
  never its own token. ``num_decoded`` is per row (``B``) or per target (``B x K``: the fused
  ASSD call drafts for several hypothetical prefixes at once). Invalid rows (``target_valid``
  False: padding of the fixed K) see nothing; the model's attention sink keeps their softmax
  finite.
  """
  limit = target_rank_BxK
  if num_decoded is not None:
    limit = jnp.minimum(limit, num_decoded if num_decoded.ndim == 2 else num_decoded[:, None])
  return jnp.where(target_valid_BxK, limit, 0).astype(jnp.int32)


def node_bits(row_node_BxR: Array, ancestors_BxNxN: Array) -> Array:
  """Tree rows' node bitsets, int32 ``B x R x 2``: a row of node ``u`` sees ``u`` and its
  ancestors (``ancestors_BxNxN[b, u, v]``: ``v`` is ``u`` or an ancestor of ``u``); a row of
  node ``-1`` (the committed prefix) sees no node. At most :data:`MAX_TREE_NODES` nodes."""
  num_nodes = ancestors_BxNxN.shape[-1]
  if num_nodes > MAX_TREE_NODES:
    raise ValueError(f"at most {MAX_TREE_NODES} tree nodes, got {num_nodes}")
  rows_BxRxN = jnp.take_along_axis(ancestors_BxNxN,
                                   jnp.clip(row_node_BxR, 0, num_nodes - 1)[..., None], 1)
  rows_BxRxN &= (row_node_BxR >= 0)[..., None]
  rows_BxRxN = jnp.pad(rows_BxRxN, ((0, 0), (0, 0), (0, MAX_TREE_NODES - num_nodes)))
  weights = jnp.left_shift(jnp.uint32(1), jnp.arange(32, dtype=jnp.uint32))
  words = (rows_BxRxN.reshape(rows_BxRxN.shape[:2] + (2, 32)).astype(jnp.uint32) * weights).sum(
      -1, dtype=jnp.uint32)
  return jax.lax.bitcast_convert_type(words, jnp.int32)


def sees_node(word0: Array, word1: Array, key_node: Array) -> Array:
  """Is bit ``key_node`` set in the bitset ``(word0, word1)``: bool, broadcast elementwise
  (e.g. ``B x T x 1`` words against ``B x 1 x S`` nodes); node ``-1`` is never seen."""
  word = jnp.where(key_node < 32, word0, word1).astype(jnp.uint32)
  bit = jnp.right_shift(word, (key_node % 32).astype(jnp.uint32)) & 1
  return (bit == 1) & (key_node >= 0)


def dense(visibility: Visibility) -> Array:
  """The mask as bool ``B x T x S`` (for the reference attention and tests)."""
  mask = visibility.key_rank_BxS[:, None, :] < visibility.row_limit_BxT[:, :, None]
  if visibility.row_nodes_BxTx2 is not None:
    words = visibility.row_nodes_BxTx2[:, :, None, :]
    mask |= sees_node(words[..., 0], words[..., 1], visibility.key_node_BxS[:, None, :])
  return mask
