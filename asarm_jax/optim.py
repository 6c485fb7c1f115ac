"""Optimizer: AdamW with warmup + cosine (or constant) schedule, clipping, NaN/Inf guard."""
from __future__ import annotations

import ml_collections
import optax


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
  raise ValueError(f"optim.schedule={config.schedule!r}: expected 'cosine' or 'constant'.")


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """Clipped AdamW; a non-finite gradient skips the update (counted in the optimizer state)."""
  tx = optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(learning_rate_schedule(config, num_steps), b1=config.b1, b2=config.b2,
                  weight_decay=config.weight_decay))
  return optax.apply_if_finite(tx, max_consecutive_errors=config.max_consecutive_nonfinite)
