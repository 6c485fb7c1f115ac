"""One network call in rank space: masks from :mod:`asarm_jax.masks`, then the model.

Every caller (training, density, samplers) goes through :func:`call`, so the masks the model
is trained with are exactly those it is evaluated and sampled with.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from asarm_jax import masks

Array = jnp.ndarray


def call(model: nn.Module, params: Any, tokens_rank_BxL: Array, perm_BxL: Array,
         num_visible_B: Array, target_rank_BxK: Array, target_valid_BxK: Array,
         num_decoded_B: Array | None = None) -> Array:
  """Logits ``B x K x V`` for target ranks, with rows already gathered into rank space.

  Args:
    tokens_rank_BxL: tokens in generation order (``tokens[perm]``).
    perm_BxL: true position of each rank.
    num_visible_B: prompt size ``m``; ranks ``< m`` attend bidirectionally.
    target_rank_BxK, target_valid_BxK: the K query rows (fixed K; invalid rows are padding).
    num_decoded_B: ``None`` for sigma-causal densities; the number of decoded ranks for draft
      marginals p(x_j | decoded).
  """
  batch, length = tokens_rank_BxL.shape
  rank_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  content = masks.content_mask(rank_BxL, rank_BxL, num_visible_B, model.causal_prompt)
  query = masks.query_mask(target_rank_BxK, target_valid_BxK, rank_BxL, num_decoded_B)
  target_positions = jnp.take_along_axis(perm_BxL, jnp.clip(target_rank_BxK, 0, length - 1), 1)
  return model.apply(params, tokens_rank_BxL, perm_BxL, content, target_positions, query)
