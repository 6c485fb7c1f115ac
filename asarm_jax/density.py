"""Exact any-subset density: every generated token's conditional in one network call."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asarm_jax import distribution, forward, ordering

Array = jnp.ndarray


def target_log_probs(model: nn.Module, params: Any, tokens_rank_BxL: Array,
                     sigma: ordering.Ordering, target_rank_BxK: Array, valid_BxK: Array,
                     num_decoded: Array | None, temperature: float = 1.0) -> Array:
  """``log p(x_t | ...)`` of each target's own token, float32 ``B x K`` (0 where invalid).

  One call of :func:`asarm_jax.forward.call` in rank space; ``num_decoded`` (``None``, ``B`` or
  ``B x K``) is the query rule's limit, as in the samplers: ``None`` gives sigma-causal
  conditionals, a limit ``n`` the draft marginal given ranks ``< n``.
  """
  length = tokens_rank_BxL.shape[1]
  logits = forward.call(model, params, tokens_rank_BxL, sigma.perm_BxL, sigma.num_visible_B,
                        target_rank_BxK, valid_BxK, num_decoded)
  with jax.named_scope("log_probs"):  # a scope for profiles (benchmarks/profile_step.py)
    target_token_BxK = jnp.take_along_axis(tokens_rank_BxL,
                                           jnp.clip(target_rank_BxK, 0, length - 1), 1)
    if distribution.static_positive(temperature):
      token_logp = distribution.token_log_probs(logits, target_token_BxK,
                                                model.num_special_tokens, temperature)
    else:  # greedy: the arg-max's table
      logp = distribution.log_probs(logits, model.num_special_tokens, temperature)
      token_logp = jnp.take_along_axis(logp, target_token_BxK[..., None], -1)[..., 0]
    return jnp.where(valid_BxK, token_logp, 0.0)


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
  logp = target_log_probs(model, params, tokens_rank, sigma, target_rank, hidden,
                          sigma.num_visible_B if independent else None, temperature)
  return ordering.to_position_space(logp, sigma.perm_BxL)
