"""One network call in rank space: masks from :mod:`asarm_jax.masks`, then the model.

Every caller (training, density, samplers) goes through :func:`call`, so the masks the model
is trained with are exactly those it is evaluated and sampled with.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from asarm_jax import masks, models
from asarm_jax.models import attention
from asarm_jax.models.two_stream import Cache

Array = jnp.ndarray


class TreeRows(NamedTuple):
  """A tree of ``N`` candidate tokens evaluated in one cached call (tree decoding).

  Node ``u`` holds ``tokens_BxN[u]`` at rank ``rank_BxN[u]`` (siblings share a rank); its
  content row sees the committed ranks ``< num_decoded`` and ``ancestors_BxNxN[u]`` (its
  ancestors and itself). Its key and value go to cache slot ``L + u`` (the cache has ``L + N``
  slots). ``target_node_BxK`` gives the node each query row conditions on (``-1``: only the
  committed prefix); such a row sees what that node's content row sees.
  """
  tokens_BxN: Array
  rank_BxN: Array
  ancestors_BxNxN: Array
  target_node_BxK: Array


def call(model: nn.Module, params: Any, tokens_rank_BxL: Array, perm_BxL: Array,
         num_visible_B: Array, target_rank_BxK: Array, target_valid_BxK: Array,
         num_decoded: Array | None = None, *, cache: Cache | None = None,
         content_rank_BxR: Array | None = None, tree: TreeRows | None = None,
         head: bool = True):
  """Logits ``B x K x V`` for target ranks, with rows already gathered into rank space.

  Args:
    tokens_rank_BxL: tokens in generation order (``tokens[perm]``).
    perm_BxL: true position of each rank.
    num_visible_B: prompt size ``m``; ranks ``< m`` attend bidirectionally.
    target_rank_BxK, target_valid_BxK: the K query rows (fixed K; invalid rows are padding).
    num_decoded: ``None`` for sigma-causal densities; the number of decoded ranks (``B``, or
      ``B x K`` per target row) for draft marginals p(x_j | decoded).
    cache: optional rank-indexed KV cache (``model.init_cache(B, S)``, ``S >= L``). Then only
      the content rows of ranks ``content_rank_BxR`` are computed (written into the cache;
      ranks ``>= L`` are dropped, or with one row of one rank into the last slot:
      ``two_stream.write_layer_cache``), every row attends over the cache, and ``(logits,
      new_cache)`` is returned. Cached slots must hold the content of the ranks the masks let
      rows see. Slots ``>= L`` have no rank: only ``tree`` rows may see slots ``L..L+N-1``
      (a cache may have more slots than it needs, e.g. rounded to the kernel's key blocks).
    tree: optional :class:`TreeRows` (needs ``cache`` with ``S = L + N`` and ``num_decoded``
      of shape ``B``): its N content rows are computed after the ``content_rank_BxR`` rows.
    head: ``False`` returns the query rows' features ``B x K x D`` instead of the logits;
      :func:`head` turns any subset of them into logits.
  """
  batch, length = tokens_rank_BxL.shape
  if cache is None:
    content_rank_BxR = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    num_slots = length
  else:
    num_slots = cache.positions_BxS.shape[1]
  key_rank_BxS = jnp.broadcast_to(jnp.arange(num_slots, dtype=jnp.int32), (batch, num_slots))
  safe_rank_BxR = jnp.clip(content_rank_BxR, 0, length - 1)
  limits = [masks.content_limit(content_rank_BxR, num_visible_B, model.causal_prompt),
            masks.query_limit(target_rank_BxK, target_valid_BxK, num_decoded)]
  target_positions = jnp.take_along_axis(perm_BxL, jnp.clip(target_rank_BxK, 0, length - 1), 1)
  tokens_BxR = jnp.take_along_axis(tokens_rank_BxL, safe_rank_BxR, 1)
  positions_BxR = jnp.take_along_axis(perm_BxL, safe_rank_BxR, 1)
  if cache is None:
    visibility = masks.Visibility(jnp.concatenate(limits, 1), key_rank_BxS)
    return model.apply(params, tokens_BxR, positions_BxR, target_positions, visibility,
                       head=head)
  slots_BxR = jnp.where(content_rank_BxR < length, content_rank_BxR, num_slots)
  nodes = {}
  if tree is not None:
    num_nodes = tree.tokens_BxN.shape[1]
    node_BxN = jnp.broadcast_to(jnp.arange(num_nodes, dtype=jnp.int32), (batch, num_nodes))
    # A node sees the committed ranks (< n: the content rule at row rank n - 1) and its path;
    # the tree's slots (L + u) have ranks >= L, which no limit reaches.
    committed_BxN = jnp.broadcast_to(num_decoded[:, None] - 1, node_BxN.shape)
    limits.insert(1, masks.content_limit(committed_BxN, num_visible_B, model.causal_prompt))
    row_node_BxT = jnp.concatenate([jnp.full(content_rank_BxR.shape, -1, jnp.int32), node_BxN,
                                    jnp.where(target_valid_BxK, tree.target_node_BxK, -1)], 1)
    nodes = dict(row_nodes_BxTx2=masks.node_bits(row_node_BxT, tree.ancestors_BxNxN),
                 key_node_BxS=jnp.where((key_rank_BxS >= length)
                                        & (key_rank_BxS < length + num_nodes),
                                        key_rank_BxS - length, -1))
    tokens_BxR = jnp.concatenate([tokens_BxR, tree.tokens_BxN], 1)
    positions_BxR = jnp.concatenate(
        [positions_BxR, jnp.take_along_axis(perm_BxL, jnp.clip(tree.rank_BxN, 0, length - 1), 1)],
        1)
    slots_BxR = jnp.concatenate([slots_BxR, length + node_BxN], 1)
  row_limit_BxT = jnp.concatenate(limits, 1)
  if tree is not None and models.is_batch_invariant(model):
    nodes["tail"] = _tail(tree, num_decoded, length, row_limit_BxT, row_node_BxT,
                          content_rank_BxR.shape[1])
  visibility = masks.Visibility(row_limit_BxT, key_rank_BxS, **nodes)
  return model.apply(params, tokens_BxR, positions_BxR, target_positions, visibility,
                     cache=cache, cache_slots_BxL=slots_BxR, head=head)


def _tail(tree: TreeRows, num_decoded_B: Array, length: int, row_limit_BxT: Array,
          row_node_BxT: Array, num_content: int) -> masks.Tail:
  """The tree call's rows in rank order (:class:`asarm_jax.masks.Tail`): the root's group (the
  committed content row and the root's query rows) and one group per node (its content row
  and its query rows), each with a tail of two key blocks from the committed pointer's block."""
  num_nodes = tree.tokens_BxN.shape[1]
  per_node = tree.target_node_BxK.shape[1] // (num_nodes + 1)  # D + 1 query rows a group
  if num_content != 1:
    raise ValueError("a batch-invariant tree call needs the cache (one committed content row); "
                     "deterministic tree decoding runs with cache=True")
  if per_node + 1 > attention.BLOCK_Q:  # a group's rows are one query tile
    raise ValueError(f"a batch-invariant tree call has depth <= {attention.BLOCK_Q - 2}; "
                     f"got {per_node - 1}")
  # Rows: the committed content row, the N nodes' content rows, then the query rows node by
  # node (the root's first).
  queries = 1 + num_nodes + per_node * np.arange(num_nodes + 1)[:, None] + np.arange(per_node)
  group_rows_GxP = np.concatenate([np.arange(num_nodes + 1)[:, None], queries], 1)
  base_B = num_decoded_B // attention.BLOCK_K * attention.BLOCK_K
  rank_BxW = base_B[:, None] + jnp.arange(2 * attention.BLOCK_K, dtype=jnp.int32)
  committed_BxW = rank_BxW < num_decoded_B[:, None]
  # on_path_BxUxWxV: node v is on node u's path and holds the column's rank.
  on_path_BxUxWxV = (tree.ancestors_BxNxN[:, :, None, :]
                     & (tree.rank_BxN[:, None, None, :] == rank_BxW[:, None, :, None]))
  has_node_BxUxW = on_path_BxUxWxV.any(-1)
  node_slot_BxUxW = length + jnp.argmax(on_path_BxUxWxV, -1).astype(jnp.int32)
  slot_BxGxW = jnp.concatenate([
      jnp.where(committed_BxW, rank_BxW, 0)[:, None],
      jnp.where(committed_BxW[:, None], rank_BxW[:, None],
                jnp.where(has_node_BxUxW, node_slot_BxUxW, 0))], 1)
  seen_BxGxW = jnp.concatenate([committed_BxW[:, None],
                                committed_BxW[:, None] | has_node_BxUxW], 1)
  node_rank_BxT = jnp.take_along_axis(tree.rank_BxN, jnp.maximum(row_node_BxT, 0), 1)
  return masks.Tail(
      group_rows_GxP=jnp.asarray(group_rows_GxP, jnp.int32), base_B=base_B,
      slot_BxGxW=slot_BxGxW,
      rank_BxGxW=jnp.where(seen_BxGxW, rank_BxW[:, None], jnp.iinfo(jnp.int32).max),
      row_limit_BxT=jnp.where(row_node_BxT >= 0, node_rank_BxT + 1, row_limit_BxT))


def head(model: nn.Module, params: Any, features_BxKxD: Array) -> Array:
  """The model's output head on features of :func:`call` with ``head=False``: float32 logits
  ``B x K x V``, equal to those of the call with ``head=True``."""
  return model.apply(params, features_BxKxD, method="logits")
