"""One network call in rank space: masks from :mod:`asarm_jax.masks`, then the model.

Every caller (training, density, samplers) goes through :func:`call`, so the masks the model
is trained with are exactly those it is evaluated and sampled with.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from asarm_jax import masks
from asarm_jax.models.two_stream import Cache

Array = jnp.ndarray


def call(model: nn.Module, params: Any, tokens_rank_BxL: Array, perm_BxL: Array,
         num_visible_B: Array, target_rank_BxK: Array, target_valid_BxK: Array,
         num_decoded: Array | None = None, *, cache: Cache | None = None,
         content_rank_BxR: Array | None = None):
  """Logits ``B x K x V`` for target ranks, with rows already gathered into rank space.

  Args:
    tokens_rank_BxL: tokens in generation order (``tokens[perm]``).
    perm_BxL: true position of each rank.
    num_visible_B: prompt size ``m``; ranks ``< m`` attend bidirectionally.
    target_rank_BxK, target_valid_BxK: the K query rows (fixed K; invalid rows are padding).
    num_decoded: ``None`` for sigma-causal densities; the number of decoded ranks (``B``, or
      ``B x K`` per target row) for draft marginals p(x_j | decoded).
    cache: optional rank-indexed KV cache (``model.init_cache(B, L)``). Then only the content
      rows of ranks ``content_rank_BxR`` are computed (written into the cache; ranks ``>= L``
      are dropped), every row attends over the cache, and ``(logits, new_cache)`` is returned.
      Cached slots must hold the content of the ranks the masks let rows see.
  """
  batch, length = tokens_rank_BxL.shape
  rank_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  if cache is None:
    content_rank_BxR = rank_BxL
  safe_rank_BxR = jnp.clip(content_rank_BxR, 0, length - 1)
  content = masks.content_mask(content_rank_BxR, rank_BxL, num_visible_B, model.causal_prompt)
  query = masks.query_mask(target_rank_BxK, target_valid_BxK, rank_BxL, num_decoded)
  target_positions = jnp.take_along_axis(perm_BxL, jnp.clip(target_rank_BxK, 0, length - 1), 1)
  tokens_BxR = jnp.take_along_axis(tokens_rank_BxL, safe_rank_BxR, 1)
  positions_BxR = jnp.take_along_axis(perm_BxL, safe_rank_BxR, 1)
  if cache is None:
    return model.apply(params, tokens_BxR, positions_BxR, content, target_positions, query)
  return model.apply(params, tokens_BxR, positions_BxR, content, target_positions, query,
                     cache=cache, cache_slots_BxL=jnp.where(content_rank_BxR < length,
                                                           content_rank_BxR, length))
