"""The one output distribution that training, density and every sampler share."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def log_probs(logits_BxKxV: Array, num_special_tokens: int,
              temperature: float | Array = 1.0) -> Array:
  """Tempered float32 log-probabilities with special ids ``[0, num_special_tokens)`` excluded.

  Special tokens (``<pad>``, ``<unk>``, ``<eos>``, ``<mask>``) get log-probability ``-inf`` and
  the rest is renormalised, so they can never be sampled and never carry density.
  ``temperature = 0`` is the greedy limit: all mass on the arg-max (lowest id on ties), so every
  sampler that draws from these rows decodes greedily. ``temperature`` may be a traced scalar.
  """
  logits = logits_BxKxV.astype(jnp.float32)
  special = jnp.arange(logits.shape[-1]) < num_special_tokens
  logits = jnp.where(special, -jnp.inf, logits)
  if isinstance(temperature, (int, float)) and temperature > 0:  # static: no greedy branch
    return jax.nn.log_softmax(logits / temperature, axis=-1)
  greedy = jnp.where(jnp.arange(logits.shape[-1]) == jnp.argmax(logits, -1, keepdims=True),
                     0.0, -jnp.inf)
  if isinstance(temperature, (int, float)):
    return greedy
  tempered = jax.nn.log_softmax(logits / jnp.where(temperature > 0, temperature, 1.0), axis=-1)
  return jnp.where(temperature > 0, tempered, greedy)
