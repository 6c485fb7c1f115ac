"""The sampling loop's state and the operations on it that every method shares.

Everything is in rank space (:mod:`asarm_jax.ordering`): the prompt holds ranks ``< m``, the
row's pointer ``n`` (``num_decoded``) says how many ranks are committed, and a row is finished
when ``n`` reaches ``num_target`` (``m`` plus its number of real hidden positions; padding
ranks come after it and are never targeted).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from asarm_jax import ordering
from asarm_jax.sampling.network import Network

Array = jnp.ndarray


@flax.struct.dataclass
class State:
  """The loop carry; everything is per row ``b`` and in rank space."""
  tokens_rank_BxL: Array  # int32; ranks >= num_decoded hold stale values, never attended.
  perm_BxL: Array  # position of each rank (prompt, hidden in sigma order, padding last).
  num_visible_B: Array  # prompt size m.
  num_decoded_B: Array  # n: ranks < n are committed.
  num_target_B: Array  # the row is finished when n reaches this rank.
  num_calls_B: Array  # network calls spent on the row.
  num_cached_B: Array  # the cache holds the content of ranks < num_cached (cached mode).
  rng_B: jax.Array  # each row's own key: a row's draws never depend on its neighbours.
  temperature: Array  # float32 scalar; 0 is greedy.
  cache: Any  # None: every call recomputes all content rows.
  carry: Any = None  # the method's own state (pending drafts, a candidate tree, ...).
  round_ms_S: Any = None  # auto: the cost model's ms of a round at each draft size (shared).

  def shared(self) -> dict[str, Any]:
    """The fields that are the same for every row (not indexed by row)."""
    return dict(temperature=self.temperature, round_ms_S=self.round_ms_S)


def init_state(tokens_BxL: Array, visible_BxL: Array, order_BxL: Array, length_B: Array,
               rng_B: jax.Array, temperature: Array | float = 1.0, cache: Any = None,
               round_ms_S: Array | None = None) -> State:
  """Rank-space state before any token is generated; positions ``>= length_B`` are padding.

  Padding is neither prompt nor target: it gets the ranks after every hidden position, so the
  masks keep every real row from attending to it.
  """
  batch, length = tokens_BxL.shape
  positions_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens_BxL.shape)
  real_BxL = positions_BxL < length_B[:, None]
  # Rank of every position under (order, position); padding keys sort after all of them.
  order_rank_BxL = jnp.argsort(jnp.lexsort((positions_BxL, order_BxL), axis=-1), axis=-1)
  key_BxL = jnp.where(real_BxL, order_rank_BxL, length + positions_BxL)
  sigma = ordering.make_ordering(visible_BxL & real_BxL, key_BxL)
  return State(tokens_rank_BxL=ordering.to_rank_space(tokens_BxL, sigma.perm_BxL),
               perm_BxL=sigma.perm_BxL, num_visible_B=sigma.num_visible_B,
               num_decoded_B=sigma.num_visible_B,
               num_target_B=real_BxL.sum(-1).astype(jnp.int32),
               num_calls_B=jnp.zeros((batch,), jnp.int32),
               num_cached_B=jnp.zeros((batch,), jnp.int32), rng_B=rng_B,
               temperature=jnp.asarray(temperature, jnp.float32), cache=cache,
               round_ms_S=round_ms_S)


def live(state: State) -> Array:
  """bool ``B``: rows with tokens left to generate."""
  return state.num_decoded_B < state.num_target_B


def targets(first_B: Array, num_target_B: Array, num: int) -> tuple[Array, Array]:
  """Target ranks ``first..first+num-1`` (``B x num``) and whether each is a real hidden rank."""
  target_BxK = first_B[:, None] + jnp.arange(num, dtype=jnp.int32)
  return target_BxK, target_BxK < num_target_B[:, None]


def call(net: Network, params: Any, state: State, tokens_rank_BxL: Array, target_BxK: Array,
         valid_BxK: Array, num_decoded: Array | None, content_start_B: Array,
         num_content: int, head: bool = True) -> tuple[Array, Any]:
  """One network call: log-probs ``B x K x V`` of the target rows at the state's temperature
  (``head=False``: their features ``B x K x F``, for :func:`log_probs` of the rows needed),
  and the cache.

  Cached: only content ranks ``content_start..content_start+num_content-1`` are computed.
  Uncached: every content row is, and the content arguments are ignored.
  """
  args = (params, tokens_rank_BxL, state.perm_BxL, state.num_visible_B, target_BxK, valid_BxK,
          num_decoded)
  if state.cache is None:
    out, cache = net(*args, head=head), None
  else:
    content_rank_BxR = content_start_B[:, None] + jnp.arange(num_content, dtype=jnp.int32)
    out, cache = net(*args, cache=state.cache, content_rank_BxR=content_rank_BxR, head=head)
  return (log_probs(net, params, state, out, head=False) if head else out), cache


def log_probs(net: Network, params: Any, state: State, x_BxKx: Array,
              head: bool = True) -> Array:
  """Log-probs ``B x K x V`` at the state's temperature of logits, or (``head``) of features
  (the network's head applied first)."""
  logits_BxKxV = net.head(params, x_BxKx) if head else x_BxKx
  return net.log_probs(logits_BxKxV, state.temperature)


def write(tokens_rank_BxL: Array, num_decoded_B: Array, new_BxC: Array,
          num_new_B: Array) -> Array:
  """Writes ``new_BxC[:, :num_new]`` at ranks ``n, n+1, ...``; every other rank is kept."""
  offset_BxL = jnp.arange(tokens_rank_BxL.shape[1], dtype=jnp.int32) - num_decoded_B[:, None]
  new_BxL = jnp.take_along_axis(new_BxC, jnp.clip(offset_BxL, 0, new_BxC.shape[1] - 1), 1)
  write_BxL = (offset_BxL >= 0) & (offset_BxL < num_new_B[:, None])
  return jnp.where(write_BxL, new_BxL, tokens_rank_BxL)


def commit(state: State, tokens_BxC: Array, num_new_B: Array, num_cached_B: Array) -> State:
  """Commits ``tokens_BxC[:, :num_new]`` at the pointer and advances it."""
  return state.replace(
      tokens_rank_BxL=write(state.tokens_rank_BxL, state.num_decoded_B, tokens_BxC, num_new_B),
      num_decoded_B=state.num_decoded_B + num_new_B, num_cached_B=num_cached_B)


def split(rng_B: jax.Array, num: int) -> tuple[jax.Array, ...]:
  """``num`` new keys per row (each ``B``), split from each row's own key."""
  keys_BxN = jax.vmap(lambda key: jax.random.split(key, num))(rng_B)
  return tuple(keys_BxN[:, i] for i in range(num))


def _keys(rng_B: jax.Array, num: int) -> jax.Array:
  """``B x num`` keys: ``fold_in(rng_B[b], i)``, so draw ``i`` of a row never depends on how
  many draws the call makes."""
  index_N = jnp.arange(num, dtype=jnp.uint32)
  return jax.vmap(lambda key: jax.vmap(lambda i: jax.random.fold_in(key, i))(index_N))(rng_B)


def draw(rng_B: jax.Array, logp_BxV_or_BxKxV: Array) -> Array:
  """One token per row of ``logp`` (int32 ``B`` or ``B x K``): row ``b`` from its key
  ``rng_B[b]``, its ``i``-th of ``K`` from ``fold_in(rng_B[b], i)``."""
  if logp_BxV_or_BxKxV.ndim == 2:
    return jax.vmap(jax.random.categorical)(rng_B, logp_BxV_or_BxKxV).astype(jnp.int32)
  keys_BxK = _keys(rng_B, logp_BxV_or_BxKxV.shape[1])
  return jax.vmap(jax.vmap(jax.random.categorical))(keys_BxK, logp_BxV_or_BxKxV).astype(jnp.int32)


def uniform(rng_B: jax.Array, num: int) -> Array:
  """float32 ``B x num`` in ``[0, 1)``; entry ``(b, i)`` from ``fold_in(rng_B[b], i)``."""
  return jax.vmap(jax.vmap(jax.random.uniform))(_keys(rng_B, num))
