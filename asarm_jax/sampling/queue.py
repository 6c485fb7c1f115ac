"""Continuous batching: ``S`` slots decode ``N`` queued rows inside the one loop.

The first ``S`` rows start together (one batched prefill). Whenever a slot's row is finished,
the row is written out and the slot takes the next waiting row: its state is built from the
queue's arrays on the device and its prefill (the method's ``init`` at batch 1) runs inside the
loop, so no slot idles while rows wait and all ``N`` rows are one dispatch. Every random draw of
a row comes from that row's own key (:attr:`Rows.rng_N`), and everything a round computes for a
row reads that row only, so a row's sample depends neither on ``S`` nor on its slot or its
neighbours.
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

  def state(self, start: Array | int, size: int, shared: dict[str, Any]) -> State:
    """The rank-space state of rows ``start..start+size-1``, before any call, with the
    fields every row shares (:meth:`State.shared`)."""
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, start, size)
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
  state = method.init(net, params, spec, rows.state(0, num_slots, shared), use_cache)
  num_rows = rows.tokens_NxL.shape[0]
  num_sizes = methods.rounds_by_size(method, spec, state).shape[1]
  return state, Queue(rows=rows, row_S=jnp.arange(num_slots, dtype=jnp.int32),
                      num_taken=jnp.int32(num_slots), num_prefills=jnp.int32(0),
                      tokens_NxL=rows.tokens_NxL,
                      num_calls_N=jnp.zeros((num_rows,), jnp.int32),
                      num_generated_N=jnp.zeros((num_rows,), jnp.int32),
                      rounds_by_size_NxS=jnp.zeros((num_rows, num_sizes), jnp.int32))


def write_out(method: Any, spec: SamplerSpec, queue: Queue, state: State,
              slots_K: Array) -> Queue:
  """The rows of the slots ``slots_K`` (int) written to the queue's results."""
  take = lambda x_S: x_S[slots_K]
  put = lambda results, values: results.at[take(queue.row_S)].set(values)
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


def _put(state: State, row: State, slot: Array) -> State:
  """``state`` with slot ``slot`` replaced by the one-row state ``row``."""
  shared = state.shared()
  unset = {name: None for name in shared}
  merged = jax.tree.map(lambda x_S, x_1: jax.lax.dynamic_update_slice_in_dim(x_S, x_1, slot, 0),
                        state.replace(**unset), row.replace(**unset))
  return merged.replace(**shared)


def refill(net: Network, params: Any, spec: SamplerSpec, method: Any, use_cache: bool,
           state: State, queue: Queue) -> tuple[State, Queue]:
  """While a slot's row is finished and rows wait: write that row out, move the next row into
  the slot and prefill it (a batch-1 call)."""

  def has_free_slot(carry: tuple[State, Queue]) -> Array:
    state, queue = carry
    return jnp.any(~state_lib.live(state)) & waiting(queue)

  def take_next(carry: tuple[State, Queue]) -> tuple[State, Queue]:
    state, queue = carry
    slot = jnp.argmax(~state_lib.live(state))
    queue = write_out(method, spec, queue, state, slot[None])
    row = method.init(net, params, spec, queue.rows.state(queue.num_taken, 1, state.shared()),
                      use_cache)
    return _put(state, row, slot), queue.replace(
        row_S=queue.row_S.at[slot].set(queue.num_taken), num_taken=queue.num_taken + 1,
        num_prefills=queue.num_prefills + 1)

  return jax.lax.while_loop(has_free_slot, take_next, (state, queue))
