"""The one output distribution that training, density and every sampler share."""
from __future__ import annotations

import functools
from typing import Any

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
  logits = _without_specials(logits_BxKxV, num_special_tokens)
  if static_positive(temperature):  # no greedy branch
    return log_softmax(logits / temperature)
  greedy = jnp.where(jnp.arange(logits.shape[-1]) == jnp.argmax(logits, -1, keepdims=True),
                     0.0, -jnp.inf)
  if isinstance(temperature, (int, float)):
    return greedy
  tempered = log_softmax(logits / jnp.where(temperature > 0, temperature, 1.0))
  return jnp.where(temperature > 0, tempered, greedy)


def token_log_probs(logits_BxKxV: Array, tokens_BxK: Array, num_special_tokens: int,
                    temperature: float = 1.0) -> Array:
  """``log_probs(...)[b, k, tokens[b, k]]``, float32 ``B x K``, for a static
  ``temperature > 0`` (training, densities): the same values and the same gradient, bit for
  bit, as autodiff's through the table.

  The gradient is autodiff's own expression, ``(g onehot - (g / S) exp(shifted)) / T`` with
  ``S`` the softmax's normaliser, written as one elementwise pass over the logits that XLA
  fuses with what consumes it (the cast back to the head's dtype). Autodiff through
  :func:`log_probs` materialises the table's cotangent and the softmax instead, float32
  ``B x K x V`` each: for xlnet_base's training step on the H200, two 4.2 GB tensors written
  and read again (``python -m benchmarks compiled_kernels --train_step=true``).
  """
  if not static_positive(temperature):
    raise ValueError(f"token_log_probs needs a static temperature > 0; got {temperature!r}")
  return _token_log_probs(logits_BxKxV, tokens_BxK.astype(jnp.int32), num_special_tokens,
                          float(temperature))


def static_positive(temperature: Any) -> bool:
  """Whether ``temperature`` is a Python number > 0 (known when tracing: no greedy branch)."""
  return isinstance(temperature, (int, float)) and temperature > 0


def _without_specials(logits_BxKxV: Array, num_special_tokens: int) -> Array:
  """Float32 logits with the special ids ``[0, num_special_tokens)`` at ``-inf``."""
  logits = logits_BxKxV.astype(jnp.float32)
  return jnp.where(jnp.arange(logits.shape[-1]) < num_special_tokens, -jnp.inf, logits)


def _shifted(logits_BxKxV: Array, num_special_tokens: int, temperature: float,
             max_BxKx1: Array | None = None) -> tuple[Array, Array]:
  """:func:`log_probs`' tempered logits (special ids at ``-inf``) less their maximum (given,
  or taken here), as ``jax.nn.log_softmax`` shifts them; and that maximum."""
  x = _without_specials(logits_BxKxV, num_special_tokens) / temperature
  if max_BxKx1 is None:
    max_BxKx1 = jnp.max(x, -1, initial=-jnp.inf, keepdims=True)
  return x - max_BxKx1, max_BxKx1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _token_log_probs(logits_BxKxV, tokens_BxK, num_special_tokens, temperature):
  return _token_log_probs_fwd(logits_BxKxV, tokens_BxK, num_special_tokens, temperature)[0]


def _token_log_probs_fwd(logits_BxKxV, tokens_BxK, num_special_tokens, temperature):
  # jax.nn.log_softmax's operations in its order, so the values are its bits.
  shifted, max_BxKx1 = _shifted(logits_BxKxV, num_special_tokens, temperature)
  sum_BxKx1 = jnp.sum(jnp.exp(shifted), -1, keepdims=True)
  token_BxK = (jnp.take_along_axis(shifted, tokens_BxK[..., None], -1)
               - jnp.log(sum_BxKx1))[..., 0]
  return token_BxK, (logits_BxKxV, tokens_BxK, max_BxKx1, sum_BxKx1)


def _token_log_probs_bwd(num_special_tokens, temperature, residuals, g_BxK):
  logits_BxKxV, tokens_BxK, max_BxKx1, sum_BxKx1 = residuals
  shifted, _ = _shifted(logits_BxKxV, num_special_tokens, temperature, max_BxKx1)
  # Autodiff's steps: the table's cotangent is g at the token; through the log-sum-exp,
  # -sum(g) / S times exp(shifted); through the division by T and the specials' mask.
  onehot = jnp.arange(shifted.shape[-1]) == tokens_BxK[..., None]
  g_BxKx1 = g_BxK[..., None]
  d_shifted = jnp.where(onehot, g_BxKx1, 0.0) + (-g_BxKx1 / sum_BxKx1) * jnp.exp(shifted)
  special = jnp.arange(shifted.shape[-1]) < num_special_tokens
  d_logits = jnp.where(special, 0.0, d_shifted / temperature)
  return d_logits.astype(logits_BxKxV.dtype), None


_token_log_probs.defvjp(_token_log_probs_fwd, _token_log_probs_bwd)


def _invariant_log_softmax(x_BxKxV: Array) -> Array:
  """``jax.nn.log_softmax`` over the last axis, the sum of ``exp`` by
  :func:`invariant_matmul.row_sum` (a maximum needs no fixed order)."""
  shifted = x_BxKxV - x_BxKxV.max(-1, keepdims=True)
  sums_N = invariant_matmul.row_sum(jnp.exp(shifted).reshape(-1, x_BxKxV.shape[-1]))
  return shifted - jnp.log(sums_N).reshape(x_BxKxV.shape[:-1] + (1,))
