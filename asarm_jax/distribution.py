"""The one output distribution that training, density and every sampler share."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from asarm_jax.models import invariant_matmul

Array = jnp.ndarray


def log_probs(logits_BxKxV: Array, num_special_tokens: int,
              temperature: float | Array = 1.0, batch_invariant: bool = False) -> Array:
  """Tempered float32 log-probabilities with special ids ``[0, num_special_tokens)`` excluded.

  Special tokens (``<pad>``, ``<unk>``, ``<eos>``, ``<mask>``) get log-probability ``-inf`` and
  the rest is renormalised, so they can never be sampled and never carry density.
  ``temperature = 0`` is the greedy limit: all mass on the arg-max (lowest id on ties), so every
  sampler that draws from these rows decodes greedily. ``temperature`` may be a traced scalar.
  With ``batch_invariant`` the normaliser's sum is the fixed-order kernel's
  (:func:`asarm_jax.models.invariant_matmul.row_sum`), so a row's values never depend on the
  other rows of the call.
  """
  log_softmax = _invariant_log_softmax if batch_invariant else jax.nn.log_softmax
  logits = logits_BxKxV.astype(jnp.float32)
  special = jnp.arange(logits.shape[-1]) < num_special_tokens
  logits = jnp.where(special, -jnp.inf, logits)
  if isinstance(temperature, (int, float)) and temperature > 0:  # static: no greedy branch
    return log_softmax(logits / temperature)
  greedy = jnp.where(jnp.arange(logits.shape[-1]) == jnp.argmax(logits, -1, keepdims=True),
                     0.0, -jnp.inf)
  if isinstance(temperature, (int, float)):
    return greedy
  tempered = log_softmax(logits / jnp.where(temperature > 0, temperature, 1.0))
  return jnp.where(temperature > 0, tempered, greedy)


def _invariant_log_softmax(x_BxKxV: Array) -> Array:
  """``jax.nn.log_softmax`` over the last axis, the sum of ``exp`` by
  :func:`invariant_matmul.row_sum` (a maximum needs no fixed order)."""
  shifted = x_BxKxV - x_BxKxV.max(-1, keepdims=True)
  sums_N = invariant_matmul.row_sum(jnp.exp(shifted).reshape(-1, x_BxKxV.shape[-1]))
  return shifted - jnp.log(sums_N).reshape(x_BxKxV.shape[:-1] + (1,))
