"""The one output distribution that training, density and every sampler share."""
from __future__ import annotations

import functools

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


def token_log_probs(logits_BxKxV: Array, tokens_BxK: Array, num_special_tokens: int,
                    temperature: float = 1.0) -> Array:
  """``log_probs(...)[b, k, tokens[b, k]]``, float32 ``B x K``: the same values, for a static
  ``temperature > 0`` (training, densities).

  Its gradient is ``(onehot(token) - softmax) * g / T``, one elementwise pass over the logits
  that XLA fuses with what consumes it (the cast back to the head's dtype). Through
  :func:`log_probs` autodiff materialises the cotangent of the whole table and the softmax,
  float32 ``B x K x V`` each: for xlnet_base's training step on the H200, two 4.2 GB tensors
  written and read again (``benchmarks/compiled_kernels.py``'s reader on the step).
  """
  if not isinstance(temperature, (int, float)) or temperature <= 0:
    raise ValueError(f"token_log_probs needs a static temperature > 0; got {temperature!r}")
  return _token_log_probs(logits_BxKxV, tokens_BxK.astype(jnp.int32), num_special_tokens,
                          float(temperature))


def _tempered(logits_BxKxV: Array, num_special_tokens: int, temperature: float) -> Array:
  """Float32 logits with the special ids at ``-inf``, over ``temperature`` (as
  :func:`log_probs`)."""
  logits = logits_BxKxV.astype(jnp.float32)
  special = jnp.arange(logits.shape[-1]) < num_special_tokens
  return jnp.where(special, -jnp.inf, logits) / temperature


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _token_log_probs(logits_BxKxV, tokens_BxK, num_special_tokens, temperature):
  return _token_log_probs_fwd(logits_BxKxV, tokens_BxK, num_special_tokens, temperature)[0]


def _token_log_probs_fwd(logits_BxKxV, tokens_BxK, num_special_tokens, temperature):
  x = _tempered(logits_BxKxV, num_special_tokens, temperature)
  # jax.nn.log_softmax's operations in its order, so the values are its bits.
  shifted = x - jax.lax.stop_gradient(x.max(-1, keepdims=True))
  log_sum_BxK = jnp.log(jnp.sum(jnp.exp(shifted), -1))
  token_BxK = jnp.take_along_axis(shifted, tokens_BxK[..., None], -1)[..., 0] - log_sum_BxK
  return token_BxK, (logits_BxKxV, tokens_BxK, x.max(-1) + log_sum_BxK)


def _token_log_probs_bwd(num_special_tokens, temperature, residuals, g_BxK):
  logits_BxKxV, tokens_BxK, log_norm_BxK = residuals
  x = _tempered(logits_BxKxV, num_special_tokens, temperature)
  softmax = jnp.exp(x - log_norm_BxK[..., None])
  onehot = jnp.arange(x.shape[-1]) == tokens_BxK[..., None]
  d_BxKxV = (onehot - softmax) * (g_BxK / temperature)[..., None]
  return d_BxKxV.astype(logits_BxKxV.dtype), None


_token_log_probs.defvjp(_token_log_probs_fwd, _token_log_probs_bwd)


def _invariant_log_softmax(x_BxKxV: Array) -> Array:
  """``jax.nn.log_softmax`` over the last axis, the sum of ``exp`` by
  :func:`invariant_matmul.row_sum` (a maximum needs no fixed order)."""
  shifted = x_BxKxV - x_BxKxV.max(-1, keepdims=True)
  sums_N = invariant_matmul.row_sum(jnp.exp(shifted).reshape(-1, x_BxKxV.shape[-1]))
  return shifted - jnp.log(sums_N).reshape(x_BxKxV.shape[:-1] + (1,))
