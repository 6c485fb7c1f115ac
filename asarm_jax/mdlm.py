"""The masked-diffusion baseline (MDLM, Sahoo et al. 2024, arXiv:2406.07524): its training loss
and its held-out bound.

An absorbing-mask diffusion with the linear schedule ``alpha_t = 1 - t`` masks each token
independently with probability ``t``; the denoiser predicts every masked token from the unmasked
ones. The denoiser is the AS-ARM's own network under the draft rule of :mod:`asarm_jax.masks`:
the unmasked tokens are the prompt (ranks ``< m``, bidirectional among themselves) and every
masked position is a query row with the limit ``m``, so it sees every unmasked token and no
masked one (:func:`masked_log_probs`). MDLM's continuous-time negative ELBO with this schedule
(weight ``-alpha'_t / (1 - alpha_t) = 1 / t``) is

  NELBO(x) = E_{t ~ U(0, 1)} E_{z_t} [ (1 / t) sum_{l masked in z_t} -log p(x_l | z_t) ],

which :func:`loss` estimates per token with stratified (MDLM's antithetic) times. Given ``k`` of
the ``n`` maskable tokens masked, ``t`` integrates out (``int_0^1 t^(k-1) (1 - t)^(n-k) dt =
1 / (k C(n, k))``), which gives the same bound as

  NELBO(x) = n E_{k ~ U{1..n}} E_{|S| = k} [ (1 / k) sum_{l in S} -log p(x_l | x_{not S}) ],

an estimate with no ``1 / t`` tail (every term is at most ``n`` times a token's NLL): the
held-out bound, :func:`heldout_nelbo`. Special tokens (document separators, padding) are never
masked: as in the AS-ARM's objective they are always seen and never scored, so both models'
bits are per non-special token.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asarm_jax import density

Array = jnp.ndarray


def sample_times(rng: jax.Array, batch: int) -> Array:
  """Diffusion times ``t``, float32 ``B`` in ``(0, 1]``, one from each of ``B`` equal slices
  (MDLM's antithetic sampling; no floor on ``t``), the slices shuffled over rows: each row's
  ``t`` is uniform and the batch covers ``(0, 1]`` evenly."""
  rng_u, rng_perm = jax.random.split(rng)
  slice_B = jax.random.permutation(rng_perm, batch)
  return (batch - slice_B - jax.random.uniform(rng_u, (batch,))) / batch


def mask_at_times(rng: jax.Array, maskable_BxL: Array, t_B: Array) -> Array:
  """The absorbing forward process at times ``t_B``: each maskable position is masked
  independently with probability ``t``, bool ``B x L``."""
  return maskable_BxL & (jax.random.uniform(rng, maskable_BxL.shape) < t_B[:, None])


def sample_subsets(rng: jax.Array, maskable_BxL: Array) -> tuple[Array, Array]:
  """Masked sets of the held-out bound: ``(masked_BxL, weight_B)``.

  Row ``b`` with ``n`` maskable positions masks ``k`` of them, uniformly among the sets of that
  size, with ``k`` uniform on ``1..n`` (stratified across the batch by
  :func:`sample_times`); its weight is ``n / k`` (0 where ``n = 0``).
  """
  batch = maskable_BxL.shape[0]
  rng_k, rng_pick = jax.random.split(rng)
  n_B = maskable_BxL.sum(-1)
  k_B = jnp.minimum(jnp.floor(sample_times(rng_k, batch) * n_B), n_B - 1).astype(jnp.int32) + 1
  score_BxL = jnp.where(maskable_BxL, jax.random.uniform(rng_pick, maskable_BxL.shape), 2.0)
  order_BxL = jnp.argsort(jnp.argsort(score_BxL, -1), -1)
  masked_BxL = maskable_BxL & (order_BxL < k_B[:, None])
  return masked_BxL, jnp.where(n_B > 0, n_B / jnp.maximum(k_B, 1), 0.0)


def masked_log_probs(model: nn.Module, params: Any, tokens_BxL: Array,
                     masked_BxL: Array) -> Array:
  """The denoiser: ``log p(x_l | z)`` of each masked position's own token given the unmasked
  tokens ``z``, float32 ``B x L`` (0 at unmasked positions). One network call: the unmasked
  tokens are the prompt and every masked position an independent target
  (:func:`asarm_jax.density.log_prob` with ``independent=True``)."""
  return density.log_prob(model, params, tokens_BxL, ~masked_BxL, independent=True)


def loss(model: nn.Module, params: Any, tokens_BxL: Array,
         rng: jax.Array) -> tuple[Array, dict[str, Array]]:
  """MDLM's negative ELBO in nats per non-special token: ``sum_b (1 / t_b) sum_{masked l}
  -log p(x_l | z_t) / sum_b n_b``, an unbiased estimate of the bound. ``bits_per_token`` is the
  same in bits."""
  rng_t, rng_mask = jax.random.split(rng)
  maskable_BxL = tokens_BxL >= model.num_special_tokens
  t_B = sample_times(rng_t, tokens_BxL.shape[0])
  masked_BxL = mask_at_times(rng_mask, maskable_BxL, t_B)
  nll_B = -masked_log_probs(model, params, tokens_BxL, masked_BxL).sum(-1)
  nelbo = (nll_B / t_B).sum() / jnp.maximum(maskable_BxL.sum(), 1)
  return nelbo, {"loss": nelbo, "bits_per_token": nelbo / jnp.log(2.0),
                 "num_targets": masked_BxL.sum().astype(jnp.float32),
                 "visible_fraction": 1.0 - masked_BxL.mean()}


def heldout_nelbo(model: nn.Module, params: Any, tokens_BxL: Array, visible_BxL: Array,
                  rng: jax.Array) -> tuple[Array, Array]:
  """The bound on the hidden tokens given the visible ones: ``(nats, count)``, the summed
  unbiased NELBO estimate (nats) of every row's hidden (not visible, non-special) tokens and
  their number. ``nats / count`` estimates an upper bound on the model's NLL per hidden token;
  it is a function of ``rng`` (one masked set per row, :func:`sample_subsets`)."""
  hidden_BxL = ~visible_BxL & (tokens_BxL >= model.num_special_tokens)
  masked_BxL, weight_B = sample_subsets(rng, hidden_BxL)
  nll_B = -masked_log_probs(model, params, tokens_BxL, masked_BxL).sum(-1)
  return (weight_B * nll_B).sum(), hidden_BxL.sum()
