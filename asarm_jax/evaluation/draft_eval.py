"""Draft quality: how often a speculative sampler would accept a draft, by depth.

On held-out rows at fixed visible fractions (left to right), cut points ``n`` are drawn among
the hidden ranks with :func:`asarm_jax.objectives.draft_rows`: the very rows a sampler drafts
from. The draft of rank ``n + i`` (depth ``i = 1..D``) is the marginal ``q`` given the ranks
``< n``; the exact conditional ``p`` of that rank sees every earlier rank of the true text.
Speculative sampling accepts ``x ~ q`` with probability ``min(1, p(x) / q(x))``, so the
acceptance rate is ``E_q[min(1, p/q)] = sum_x min(p(x), q(x)) = 1 - TV(p, q)``, computed
exactly from the two rows. Depth 1 is an ASSD block's second draft and a tree's level 0.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import distribution, forward, objectives, ordering


@functools.partial(jax.jit, static_argnames=("model", "depth", "cuts"))
def _overlap_sums(model: nn.Module, params: Any, tokens_BxL: jax.Array, fraction: jax.Array,
                  rng: jax.Array, temperature: jax.Array, depth: int,
                  cuts: int) -> tuple[jax.Array, jax.Array]:
  """Summed ``sum_x min(p, q)`` per depth (``D``) over one batch, and the counts (``D``)."""
  batch, length = tokens_BxL.shape
  rng_visible, rng_cuts = jax.random.split(rng)
  visible_BxL = objectives.sample_visible(rng_visible, tokens_BxL, (fraction, fraction),
                                          model.num_special_tokens)
  sigma = ordering.make_ordering(visible_BxL)
  tokens_rank_BxL = ordering.to_rank_space(tokens_BxL, sigma.perm_BxL)
  target_BxK, valid_BxK, limit_BxK = objectives.draft_rows(rng_cuts, sigma.num_visible_B,
                                                           length, cuts, depth)
  probs = lambda limit: jnp.exp(distribution.log_probs(
      forward.call(model, params, tokens_rank_BxL, sigma.perm_BxL, sigma.num_visible_B,
                   target_BxK, valid_BxK, limit), model.num_special_tokens, temperature))
  overlap_BxK = jnp.minimum(probs(limit_BxK), probs(None)).sum(-1)
  weight_BxCxD = valid_BxK.reshape(batch, cuts, depth).astype(jnp.float32)
  total_D = (overlap_BxK.reshape(batch, cuts, depth) * weight_BxCxD).sum((0, 1))
  return total_D, weight_BxCxD.sum((0, 1))


def evaluate(model: nn.Module, params: Any, batches: Sequence[np.ndarray],
             fractions: Sequence[float], temperatures: Sequence[float], depth: int, cuts: int,
             seed: int) -> dict:
  """``{"acceptance": {f"T={t:g}": {f"{f:g}": [rate at depth 1..D]}}, "depth", "cuts"}`` over
  ``batches`` (int32 ``[B, L]`` held-out rows); batch ``i`` uses ``fold_in(key(seed), i)``."""
  if not batches:
    raise ValueError("draft_acceptance: no held-out batches")
  rates = {}
  for temperature in temperatures:
    per_fraction = {}
    for fraction in fractions:
      total, count = np.zeros(depth), np.zeros(depth)
      for i, batch in enumerate(batches):
        sums, counts = _overlap_sums(model, params, jnp.asarray(batch), jnp.float32(fraction),
                                     jax.random.fold_in(jax.random.key(seed), i),
                                     jnp.float32(temperature), depth=depth, cuts=cuts)
        total, count = total + np.asarray(sums), count + np.asarray(counts)
      per_fraction[f"{fraction:g}"] = (total / np.maximum(count, 1)).round(4).tolist()
    rates[f"T={temperature:g}"] = per_fraction
  return {"acceptance": rates, "depth": depth, "cuts": cuts}
