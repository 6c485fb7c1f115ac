"""Continuous batching: ``S`` slots decode ``N`` queued rows inside the one loop.

The first ``S`` rows start together (one batched prefill). Once ``P`` slots' rows are finished
(``P`` = ``refill``, or fewer when fewer rows wait), those rows are written out and the slots
take the next waiting rows: their states are built from the queue's arrays on the device and
their prefill (the method's ``init`` on ``P`` rows, one call) runs inside the loop, so all
``N`` rows are one dispatch. A prefill of a few rows costs about what one row's does (it is
launch-bound), so a refill of ``P`` rows at a time spends far less on prefills than one of a
row at a time, for a slot idling a few rounds at most. Every random draw of a row comes from
that row's own key (:attr:`Rows.rng_N`), and everything a round or a prefill computes for a
row reads that row only, so a row's sample depends neither on ``S`` or ``P`` nor on its slot or
its neighbours.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from asarm_jax import ordering
from asarm_jax.sampling import methods
from asarm_jax.sampling import state as state_lib
from asarm_jax.sampling.network import Network
from asarm_jax.sampling.spec import SamplerSpec
from asarm_jax.sampling.state import State

Array = jnp.ndarray


@flax.struct.dataclass
class Rows:
  """The ``N`` rows to fill, as ``generate`` takes them, with one key per row."""
  tokens_NxL: Array
  visible_NxL: Array
  order_NxL: Array
  length_N: Array
  rng_N: jax.Array

  def state(self, rows_P: Array, shared: dict[str, Any]) -> State:
    """The rank-space state of rows ``rows_P`` (int, in range), before any call, with the
    fields every row shares (:meth:`State.shared`)."""
    take = lambda x: x[rows_P]
    return state_lib.init_state(take(self.tokens_NxL), take(self.visible_NxL),
                                take(self.order_NxL), take(self.length_N), take(self.rng_N),
                                **shared)


@flax.struct.dataclass
class Queue:
  """The rows, which row each slot holds, and the results of the rows that left their slot."""
  rows: Rows
  row_S: Array  # int32: the row in each slot.
  num_taken: Array  # int32 scalar: rows handed to a slot so far (the next row to take).
  num_prefills: Array  # int32 scalar: prefill calls made inside the loop.
  tokens_NxL: Array  # int32, position space: each finished row once it is written out.
  num_calls_N: Array
  num_generated_N: Array
  rounds_by_size_NxS: Array  # the rounds at each draft size (methods.rounds_by_size)


def start(net: Network, params: Any, spec: SamplerSpec, method: Any, use_cache: bool,
          rows: Rows, num_slots: int, shared: dict[str, Any]) -> tuple[State, Queue]:
  """Rows ``0..S-1`` in the slots, prefilled in one batched call."""
  state = method.init(net, params, spec, rows.state(jnp.arange(num_slots), shared), use_cache)
  num_rows = rows.tokens_NxL.shape[0]
  num_sizes = methods.rounds_by_size(method, spec, state).shape[1]
  return state, Queue(rows=rows, row_S=jnp.arange(num_slots, dtype=jnp.int32),
                      num_taken=jnp.int32(num_slots), num_prefills=jnp.int32(0),
                      tokens_NxL=rows.tokens_NxL,
                      num_calls_N=jnp.zeros((num_rows,), jnp.int32),
                      num_generated_N=jnp.zeros((num_rows,), jnp.int32),
                      rounds_by_size_NxS=jnp.zeros((num_rows, num_sizes), jnp.int32))


def default_refill(num_slots: int) -> int:
  """Rows a refill prefills together by default: an eighth of the slots, at least one. One row
  at a time, 1033 HumanEval rows (about 10 tokens each) through 64 slots took 1.31 s on an
  H200, 0.79 s in batches of 64 sorted by hidden count: 1033 batch-1 prefills of about 0.6 ms
  (docs/results.md, 2026-12-05)."""
  return max(1, num_slots // 8)


def write_out(method: Any, spec: SamplerSpec, queue: Queue, state: State,
              slots_K: Array) -> Queue:
  """The rows of the slots ``slots_K`` (int; ``S`` or more: none) written to the queue's
  results."""
  num_slots, num_rows = queue.row_S.shape[0], queue.rows.tokens_NxL.shape[0]
  clamped_K = jnp.minimum(slots_K, num_slots - 1)
  rows_K = jnp.where(slots_K < num_slots, queue.row_S[clamped_K], num_rows)
  take = lambda x_S: x_S[clamped_K]
  put = lambda results, values: results.at[rows_K].set(values, mode="drop")
  return queue.replace(
      tokens_NxL=put(queue.tokens_NxL, ordering.to_position_space(take(state.tokens_rank_BxL),
                                                                  take(state.perm_BxL))),
      num_calls_N=put(queue.num_calls_N, take(state.num_calls_B)),
      num_generated_N=put(queue.num_generated_N,
                          take(state.num_target_B) - take(state.num_visible_B)),
      rounds_by_size_NxS=put(queue.rounds_by_size_NxS,
                             take(methods.rounds_by_size(method, spec, state))))


def waiting(queue: Queue) -> Array:
  """bool scalar: rows not yet handed to a slot."""
  return queue.num_taken < queue.rows.tokens_NxL.shape[0]


def _put(state: State, rows: State, slots_P: Array) -> State:
  """``state`` with the slots ``slots_P`` (``S`` or more: none) replaced by the ``P``-row state
  ``rows``."""
  shared = state.shared()
  unset = {name: None for name in shared}
  merged = jax.tree.map(lambda x_S, x_P: x_S.at[slots_P].set(x_P, mode="drop"),
                        state.replace(**unset), rows.replace(**unset))
  return merged.replace(**shared)


def refill(net: Network, params: Any, spec: SamplerSpec, method: Any, use_cache: bool,
           state: State, queue: Queue, refill_rows: int) -> tuple[State, Queue]:
  """While ``P = refill_rows`` slots are free, or every waiting row has one: write their rows
  out, move the next waiting rows into them and prefill those together (one call of ``P``
  rows; rows past the last are computed and dropped)."""
  num_slots, num_rows = queue.row_S.shape[0], queue.rows.tokens_NxL.shape[0]

  def ready(carry: tuple[State, Queue]) -> Array:
    state, queue = carry
    num_free = jnp.sum(~state_lib.live(state))
    return waiting(queue) & (num_free >= jnp.minimum(refill_rows, num_rows - queue.num_taken))

  def take_next(carry: tuple[State, Queue]) -> tuple[State, Queue]:
    state, queue = carry
    slots_P = jnp.nonzero(~state_lib.live(state), size=refill_rows, fill_value=num_slots)[0]
    rows_P = queue.num_taken + jnp.arange(refill_rows, dtype=jnp.int32)
    use_P = (slots_P < num_slots) & (rows_P < num_rows)
    slots_P = jnp.where(use_P, slots_P, num_slots)
    queue = write_out(method, spec, queue, state, slots_P)
    rows = method.init(net, params, spec,
                       queue.rows.state(jnp.minimum(rows_P, num_rows - 1), state.shared()),
                       use_cache)
    return _put(state, rows, slots_P), queue.replace(
        row_S=queue.row_S.at[slots_P].set(rows_P, mode="drop"),
        num_taken=queue.num_taken + jnp.sum(use_P, dtype=jnp.int32),
        num_prefills=queue.num_prefills + 1)

  return jax.lax.while_loop(ready, take_next, (state, queue))
