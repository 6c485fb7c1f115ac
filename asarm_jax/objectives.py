"""Training objectives: the teacher-forced joint loss and the parallel (independent) loss of
the AS-ARM, or the masked-diffusion baseline's (:mod:`asarm_jax.mdlm`), by ``objective.kind``."""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from asarm_jax import density, mdlm, ordering

Array = jnp.ndarray

KINDS = ("asarm", "mdlm")  # objective.kind: the AS-ARM's joint loss, MDLM's negative ELBO


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


def draft_rows(rng: jax.Array, num_visible_B: Array, length: int, num_cuts: int,
               depth: int) -> tuple[Array, Array, Array]:
  """Query rows of the draft term, in rank space: targets, validity and limits, ``B x (C*D)``.

  Per row, ``num_cuts`` cut points ``n`` are drawn uniformly among the hidden ranks ``m..L-2``;
  each gets targets ``n+1 .. n+depth`` with the limit ``num_decoded = n``: exactly the draft
  rows a sampler asks for after ``n`` committed ranks (see :func:`asarm_jax.masks.query_limit`).
  """
  batch = num_visible_B.shape[0]
  span_B = length - 1 - num_visible_B  # number of possible cut ranks
  u_BxC = jax.random.uniform(rng, (batch, num_cuts))
  cut_BxC = num_visible_B[:, None] + jnp.floor(u_BxC * span_B[:, None]).astype(jnp.int32)
  target_BxCxD = cut_BxC[:, :, None] + 1 + jnp.arange(depth, dtype=jnp.int32)
  valid_BxCxD = (span_B > 0)[:, None, None] & (target_BxCxD < length)
  limit_BxCxD = jnp.broadcast_to(cut_BxC[:, :, None], target_BxCxD.shape)
  flat = lambda x: x.reshape(batch, num_cuts * depth)
  return flat(target_BxCxD), flat(valid_BxCxD), flat(limit_BxCxD)


def joint_loss(model: nn.Module, params: Any, tokens_BxL: Array, rng: jax.Array, *,
               fraction_range: tuple[float, float] = (0.01, 0.10), random_order: bool = False,
               parallel: bool = False, draft_weight: float = 0.0, draft_depth: int = 0,
               draft_cuts: int = 0) -> tuple[Array, dict[str, Array]]:
  """Mean cross-entropy (nats/token) of every hidden token, in one network call.

  Hidden tokens are ordered left to right (or randomly with ``random_order``) and each is
  predicted from the prompt plus the sigma-earlier hidden tokens. With ``fraction_range =
  (0, 0)`` this is plain causal LM training. ``parallel=True`` predicts each hidden token from
  the prompt alone (the conditionally independent baseline objective).

  With ``draft_weight > 0`` the same call also scores :func:`draft_rows` (``draft_cuts`` cut
  points per row, ``draft_depth`` targets each) and the loss is ``joint + draft_weight *
  draft``: the draft marginals that speculative samplers propose from are trained too. The
  content rows are shared; only query rows are added. ``bits_per_token`` is the joint term
  alone, the model's density.
  """
  rng_visible, rng_order = jax.random.split(rng)
  batch, length = tokens_BxL.shape
  visible = sample_visible(rng_visible, tokens_BxL, fraction_range, model.num_special_tokens)
  order = ordering.random_order(rng_order, tokens_BxL.shape) if random_order else None
  sigma = ordering.make_ordering(visible, order)
  target_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  hidden_BxL = target_BxL >= sigma.num_visible_B[:, None]
  limit_BxL = jnp.broadcast_to((sigma.num_visible_B if parallel else
                                jnp.full((batch,), length, jnp.int32))[:, None], (batch, length))
  targets, valids, limits = [target_BxL], [hidden_BxL], [limit_BxL]
  with_draft = draft_weight > 0 and draft_depth > 0 and draft_cuts > 0
  if with_draft:
    rows = draft_rows(jax.random.fold_in(rng, 2), sigma.num_visible_B, length, draft_cuts,
                      draft_depth)
    targets, valids, limits = ([x, y] for x, y in zip((target_BxL, hidden_BxL, limit_BxL), rows))
  valid_BxK = jnp.concatenate(valids, 1)
  logp_BxK = density.target_log_probs(
      model, params, ordering.to_rank_space(tokens_BxL, sigma.perm_BxL), sigma,
      jnp.concatenate(targets, 1), valid_BxK, jnp.concatenate(limits, 1))
  num_targets = jnp.maximum(hidden_BxL.sum(), 1).astype(jnp.float32)
  joint = -logp_BxK[:, :length].sum() / num_targets
  metrics = {"bits_per_token": joint / jnp.log(2.0), "num_targets": num_targets,
             "visible_fraction": visible.mean()}
  loss = joint
  if with_draft:
    num_draft = jnp.maximum(valid_BxK[:, length:].sum(), 1).astype(jnp.float32)
    draft = -logp_BxK[:, length:].sum() / num_draft
    loss = joint + draft_weight * draft
    metrics["draft_bits_per_token"] = draft / jnp.log(2.0)
  return loss, dict(metrics, loss=loss)


def _check_kind(objective: Any) -> None:
  if objective.kind not in KINDS:
    raise ValueError(f"objective.kind={objective.kind!r}: expected one of {KINDS}.")


def from_config(model: nn.Module, objective: Any) -> Callable[..., tuple[Array, dict]]:
  """``(params, tokens_BxL, rng) -> (loss, metrics)`` for a ``config.objective`` block (every
  key is read: the config base holds their defaults). ``kind="mdlm"`` reads no other key."""
  _check_kind(objective)
  if objective.kind == "mdlm":
    return functools.partial(mdlm.loss, model)
  return functools.partial(
      joint_loss, model, fraction_range=tuple(objective.fraction_range),
      random_order=objective.random_order, parallel=objective.parallel,
      draft_weight=objective.draft_weight, draft_depth=objective.draft_depth,
      draft_cuts=objective.draft_cuts)


def heldout_step(model: nn.Module, objective: Any,
                 fractions: tuple[float, ...]) -> Callable[[Any, Array], dict[str, Array]]:
  """``(params, tokens_BxL) -> metrics``: training's held-out evaluation of one batch at fixed
  visible fractions, fraction ``i`` with the key ``PRNGKey(i)``. An AS-ARM's
  ``bits_per_token@f`` is its exact joint loss (left to right, the visible sets of
  :func:`sample_visible`); an MDLM's ``elbo_bits_per_token@f`` is its bound on the same hidden
  tokens given the same visible sets (:func:`asarm_jax.mdlm.heldout_nelbo`), an upper bound on
  its bits per token up to the estimate's noise."""
  _check_kind(objective)

  def eval_step(params: Any, tokens_BxL: Array) -> dict[str, Array]:
    out = {}
    for i, fraction in enumerate(fractions):
      rng = jax.random.PRNGKey(i)
      if objective.kind == "mdlm":
        rng_visible, rng_masks = jax.random.split(rng)
        visible_BxL = sample_visible(rng_visible, tokens_BxL, (fraction, fraction),
                                     model.num_special_tokens)
        nats, count = mdlm.heldout_nelbo(model, params, tokens_BxL, visible_BxL, rng_masks)
        out[f"elbo_bits_per_token@{fraction:g}"] = nats / jnp.maximum(count, 1) / jnp.log(2.0)
      else:
        _, metrics = joint_loss(model, params, tokens_BxL, rng, fraction_range=(fraction, fraction))
        out[f"bits_per_token@{fraction:g}"] = metrics["bits_per_token"]
    return out
  return eval_step
