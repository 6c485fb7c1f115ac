"""The one output distribution that training, density and every sampler share."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def log_probs(logits_BxKxV: Array, num_special_tokens: int, temperature: float = 1.0) -> Array:
  """Tempered float32 log-probabilities with special ids ``[0, num_special_tokens)`` excluded.

  Special tokens (``<pad>``, ``<unk>``, ``<eos>``, ``<mask>``) get log-probability ``-inf`` and
  the rest is renormalised, so they can never be sampled and never carry density.
  """
  logits = logits_BxKxV.astype(jnp.float32) / temperature
  special = jnp.arange(logits.shape[-1]) < num_special_tokens
  return jax.nn.log_softmax(jnp.where(special, -jnp.inf, logits), axis=-1)
