"""Generation orders and the gather/scatter between position space and rank space.

A row's generation order sigma puts the visible prompt first (in position order) and then the
hidden positions, by default left to right. ``perm_BxL[b, r]`` is the position of rank ``r``;
gathering with it moves a row into rank space, where every mask of :mod:`asarm_jax.masks`
is a standard prefix-LM / causal one. Positions travel with the tokens (RoPE uses them), so
attention in rank space computes exactly what it would in position space.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jnp.ndarray


class Ordering(NamedTuple):
  """``perm_BxL``: position at each rank; ``rank_BxL``: rank of each position; ``num_visible_B``."""
  perm_BxL: Array
  rank_BxL: Array
  num_visible_B: Array


def make_ordering(visible_BxL: Array, order_BxL: Array | None = None) -> Ordering:
  """Builds sigma from a visibility mask and an optional order over the hidden positions.

  Args:
    visible_BxL: bool, True on the prompt.
    order_BxL: optional sort keys for the hidden positions (any ints or floats; smaller is
      generated earlier; ties broken by position). ``None`` means left to right. Values at
      visible positions are ignored.
  """
  positions = jnp.broadcast_to(jnp.arange(visible_BxL.shape[1]), visible_BxL.shape)
  hidden_key = jnp.zeros_like(positions) if order_BxL is None else jnp.where(visible_BxL, 0, order_BxL)
  # Sort by (hidden?, order, position): the prompt first in position order, then sigma.
  perm = jnp.lexsort((positions, hidden_key, ~visible_BxL), axis=-1).astype(jnp.int32)
  rank = jnp.argsort(perm, axis=-1).astype(jnp.int32)
  return Ordering(perm, rank, visible_BxL.sum(-1).astype(jnp.int32))


def random_order(rng: jax.Array, shape: tuple[int, int]) -> Array:
  """A uniformly random order (``B x L`` float keys) for :func:`make_ordering`."""
  return jax.random.uniform(rng, shape)


def to_rank_space(x_BxL: Array, perm_BxL: Array) -> Array:
  """Gathers ``x[b, perm[b, r]]``; works for trailing feature axes too."""
  idx = perm_BxL.reshape(perm_BxL.shape + (1,) * (x_BxL.ndim - 2))
  return jnp.take_along_axis(x_BxL, idx, axis=1)


def to_position_space(x_BxL: Array, perm_BxL: Array) -> Array:
  """Inverse of :func:`to_rank_space`: scatters rank-space values back to positions."""
  return to_rank_space(x_BxL, jnp.argsort(perm_BxL, axis=-1))
