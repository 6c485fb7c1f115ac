"""Optimizer: AdamW with warmup + cosine (or constant) schedule, clipping, NaN/Inf guard."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("cosine", "constant")


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup to ``config.learning_rate`` then cosine decay (or constant) to the end."""
  warmup = max(1, min(config.warmup_steps, num_steps))
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup, max(num_steps, warmup + 1),
        end_value=config.learning_rate * config.final_lr_fraction)
  if config.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate, warmup),
         optax.constant_schedule(config.learning_rate)], [warmup])
  raise ValueError(f"optim.schedule={config.schedule!r}: expected one of {SCHEDULES}.")


class GuardState(NamedTuple):
  """State of :func:`skip_nonfinite`; the counters are int32 scalars."""
  inner_state: optax.OptState
  in_a_row: jax.Array  # non-finite updates since the last finite one
  skipped: jax.Array  # non-finite updates skipped so far
  tripped: jax.Array  # bool: ``in_a_row`` reached the limit; every later update is skipped too


def skip_nonfinite(inner: optax.GradientTransformation,
                   max_consecutive: int) -> optax.GradientTransformation:
  """Wraps ``inner`` so that an update whose global norm is not finite (a NaN/Inf gradient, or
  squares past float32's range) is skipped (zero update, inner state unchanged) and counted.
  Unlike ``optax.apply_if_finite`` it never gives in: once ``max_consecutive`` updates in a row
  were non-finite, ``tripped`` latches and every later update is skipped, so the parameters
  stay finite until the caller reads ``tripped`` and stops."""

  def init(params):
    zero = jnp.zeros((), jnp.int32)
    return GuardState(inner.init(params), zero, zero, jnp.zeros((), jnp.bool_))

  def update(updates, state, params=None):
    # One scalar test on the norm that clipping and the step's metrics compute anyway, not a
    # reduction a parameter.
    finite = jnp.isfinite(optax.tree.norm(updates))
    in_a_row = jnp.where(finite, 0, state.in_a_row + 1)
    tripped = state.tripped | (in_a_row >= max_consecutive)
    updates, inner_state = jax.lax.cond(
        finite & ~tripped,
        lambda: inner.update(updates, state.inner_state, params),
        lambda: (optax.tree.zeros_like(updates), state.inner_state))
    return updates, GuardState(inner_state, in_a_row, state.skipped + (~finite).astype(jnp.int32),
                               tripped)

  return optax.GradientTransformation(init, update)


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """Clipped AdamW behind :func:`skip_nonfinite` (``config.max_consecutive_nonfinite``)."""
  tx = optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(learning_rate_schedule(config, num_steps), b1=config.b1, b2=config.b2,
                  weight_decay=config.weight_decay))
  return skip_nonfinite(tx, config.max_consecutive_nonfinite)
