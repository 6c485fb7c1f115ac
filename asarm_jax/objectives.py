"""Training objectives: the teacher-forced joint loss and the parallel (independent) loss."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asarm_jax import density, ordering

Array = jnp.ndarray


def sample_visible(rng: jax.Array, tokens_BxL: Array, fraction_range: tuple[float, float],
                   num_special_tokens: int) -> Array:
  """Draws a visible set per row, bool ``B x L``.

  The visible fraction is stratified across the batch: row ``b`` gets a fraction from the
  ``b``-th of ``B`` equal slices of ``fraction_range`` (slices shuffled over rows). Special
  tokens (document separators, padding) are always visible: they are never targets, just as
  samplers never produce them.
  """
  batch, length = tokens_BxL.shape
  rng_strata, rng_perm, rng_pick = jax.random.split(rng, 3)
  lo, hi = fraction_range
  strata = (jnp.arange(batch) + jax.random.uniform(rng_strata, (batch,))) / batch
  fraction = lo + (hi - lo) * jax.random.permutation(rng_perm, strata)
  num_visible = jnp.floor(fraction * length).astype(jnp.int32)
  score_rank = jnp.argsort(jnp.argsort(jax.random.uniform(rng_pick, (batch, length)), -1), -1)
  return (score_rank < num_visible[:, None]) | (tokens_BxL < num_special_tokens)


def joint_loss(model: nn.Module, params: Any, tokens_BxL: Array, rng: jax.Array, *,
               fraction_range: tuple[float, float] = (0.01, 0.10), random_order: bool = False,
               parallel: bool = False) -> tuple[Array, dict[str, Array]]:
  """Mean cross-entropy (nats/token) of every hidden token, in one network call.

  Hidden tokens are ordered left to right (or randomly with ``random_order``) and each is
  predicted from the prompt plus the sigma-earlier hidden tokens. With ``fraction_range =
  (0, 0)`` this is plain causal LM training. ``parallel=True`` predicts each hidden token from
  the prompt alone (the conditionally independent baseline objective).
  """
  rng_visible, rng_order = jax.random.split(rng)
  visible = sample_visible(rng_visible, tokens_BxL, fraction_range, model.num_special_tokens)
  order = ordering.random_order(rng_order, tokens_BxL.shape) if random_order else None
  logp_BxL = density.log_prob(model, params, tokens_BxL, visible, order, independent=parallel)
  num_targets = jnp.maximum((~visible).sum(), 1).astype(jnp.float32)
  loss = -logp_BxL.sum() / num_targets
  return loss, {"loss": loss, "bits_per_token": loss / jnp.log(2.0),
                "num_targets": num_targets, "visible_fraction": visible.mean()}
