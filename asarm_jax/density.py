"""Exact any-subset density: every generated token's conditional in one network call."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from asarm_jax import distribution, forward, ordering

Array = jnp.ndarray


def log_prob(model: nn.Module, params: Any, tokens_BxL: Array, visible_BxL: Array,
             order_BxL: Array | None = None, temperature: float = 1.0,
             independent: bool = False) -> Array:
  """Per-position log-probabilities ``B x L`` (float32) under generation order sigma.

  ``logp[b, i] = log p(x_i | prompt, x_{sigma-earlier})`` for hidden ``i`` and ``0`` at visible
  positions, so ``logp.sum(-1)`` is the joint log-likelihood of the hidden tokens. The
  distribution is the renormalised one samplers draw from (special tokens excluded, logits
  divided by ``temperature``). Rows may differ in prompt, visible set and order.

  Args:
    visible_BxL: bool, True on the prompt.
    order_BxL: optional sort keys for the hidden positions (default: left to right).
    independent: if True, every hidden token is conditioned on the prompt alone: the
      conditionally independent marginals of the "parallel" objective / sampler.
  """
  batch, length = tokens_BxL.shape
  sigma = ordering.make_ordering(visible_BxL, order_BxL)
  tokens_rank = ordering.to_rank_space(tokens_BxL, sigma.perm_BxL)
  target_rank = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  hidden = target_rank >= sigma.num_visible_B[:, None]
  logits = forward.call(model, params, tokens_rank, sigma.perm_BxL, sigma.num_visible_B,
                        target_rank, hidden, sigma.num_visible_B if independent else None)
  logp = distribution.log_probs(logits, model.num_special_tokens, temperature)
  token_logp = jnp.take_along_axis(logp, tokens_rank[..., None], -1)[..., 0]
  return ordering.to_position_space(jnp.where(hidden, token_logp, 0.0), sigma.perm_BxL)
