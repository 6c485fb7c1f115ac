"""Held-out density: bits per hidden token at fixed visible fractions, left to right and in
random (any-subset) order, through :func:`asarm_jax.density.log_prob`, and the masked-diffusion
bound (``mdlm_elbo``, :func:`asarm_jax.mdlm.heldout_nelbo`) on the same hidden tokens.

The visible sets are those of training's held-out evaluation (:func:`objectives.sample_visible`
with ``fraction_range = (f, f)``): ``floor(f * L)`` random positions per row plus every special
token (``<eos>`` separators), which is never a target. At ``f = 0`` left to right this is the
causal language-model loss. The two orders are exact bits; ``mdlm_elbo`` is an unbiased
estimate of an upper bound (the NELBO of the model's conditionally independent marginals, one
masked set per row: docs/mdlm.md), the only figure for a model trained with
``objective.kind="mdlm"`` (:func:`orders_for`).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import density, mdlm, objectives, ordering

ORDERS = ("left_to_right", "any_subset", "mdlm_elbo")


def orders_for(kind: str) -> tuple[str, ...]:
  """The rows a model trained with ``objective.kind=kind`` is scored on: an AS-ARM's exact
  orders and the bound of its independent marginals; an MDLM's bound alone (its sigma-causal
  conditionals were never trained)."""
  return ("mdlm_elbo",) if kind == "mdlm" else ORDERS


@functools.partial(jax.jit, static_argnames=("model", "order"))
def _nll_sum(model: nn.Module, params: Any, tokens_BxL: jax.Array, fraction: jax.Array,
             rng: jax.Array, order: str) -> tuple[jax.Array, jax.Array]:
  """Summed NLL (nats; for ``mdlm_elbo`` its bound) of the hidden tokens of one batch and
  their number."""
  rng_visible, rng_order = jax.random.split(rng)
  visible_BxL = objectives.sample_visible(rng_visible, tokens_BxL, (fraction, fraction),
                                          model.num_special_tokens)
  if order == "mdlm_elbo":
    return mdlm.heldout_nelbo(model, params, tokens_BxL, visible_BxL, rng_order)
  order_BxL = ordering.random_order(rng_order, tokens_BxL.shape) if order == "any_subset" else None
  logp_BxL = density.log_prob(model, params, tokens_BxL, visible_BxL, order_BxL)
  return -logp_BxL.sum(), (~visible_BxL).sum()


def evaluate(model: nn.Module, params: Any, batches: Sequence[np.ndarray],
             fractions: Sequence[float], seed: int, orders: Sequence[str] = ORDERS) -> dict:
  """``{"bits_per_token": {order: {f"{f:g}": bits}}, "num_tokens": {...}}`` over ``batches``
  (int32 ``[B, L]`` held-out rows) for each of ``orders`` (of :data:`ORDERS`); batch ``i``
  uses the rng ``fold_in(key(seed), i)`` at every fraction and order, so every order scores
  the same hidden tokens."""
  if not batches:
    raise ValueError("density: no held-out batches")
  bits = {order: {} for order in orders}
  counts = {order: {} for order in orders}
  for order in orders:
    for fraction in fractions:
      total, count = 0.0, 0
      for i, batch in enumerate(batches):
        nll, num = _nll_sum(model, params, jnp.asarray(batch), jnp.float32(fraction),
                            jax.random.fold_in(jax.random.key(seed), i), order=order)
        total, count = total + float(nll), count + int(num)
      bits[order][f"{fraction:g}"] = total / max(count, 1) / math.log(2.0)
      counts[order][f"{fraction:g}"] = count
  return {"bits_per_token": bits, "num_tokens": counts}
