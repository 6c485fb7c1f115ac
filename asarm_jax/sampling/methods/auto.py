"""``auto``: ASSD whose draft size every row chooses each round from its own past.

A round verifies each row's pending block of ``k`` drafts with a density call, commits the
accepted drafts plus a residual or bonus token (for ``k = 1``, a sequential step, the exact
draft alone, and no density call is needed), and a draft call proposes the next block, of the
size the row chooses now from :func:`sizes`.

**The choice.** A row keeps a running acceptance ``a_d`` for each draft depth ``d >= 2``: an
exponential average (weight :data:`DECAY` on the past, prior :data:`PRIOR_ACCEPTANCE`) of
whether the draft at depth ``d`` was accepted, over the row's rounds that reached ``d``; in a
round that does not reach ``d``, ``a_d`` moves a step :data:`FORGET` back to the prior, so a row
that turned sequential probes drafting again after a while. A block
of ``k`` drafts is expected to commit ``E(k) = 1 + sum_{j=2..k} prod_{d=2..j} a_d + [k >= 2]``
tokens (at most the tokens left), and a round whose largest block has ``k`` drafts costs
``round_ms_S[k]`` (:mod:`asarm_jax.sampling.cost_model`, at this number of slots; by calls
with deterministic decoding). The row takes
the size with the most ``E(k) / round_ms(k)`` (ties: the smaller). The batch's calls are made
at the largest size a live row chose (one compiled shape per size, picked by ``lax.switch``);
a row uses its own ``k`` drafts and never reads the rows beyond them, and each draft and
acceptance draw has its own key (:func:`asarm_jax.sampling.state.draw`), so a row's sample does
not depend on its neighbours.

**Exact.** A row's ``k`` is a function of its past (its committed tokens and acceptances), fixed
before the round's drafts are drawn. Given the past, a round of speculative sampling with any
fixed ``k`` commits tokens that follow the model's sequential conditionals
(:func:`asarm_jax.sampling.drafts.verify`), so the tokens' law is the sequential one whatever
rule picks ``k`` from the past (``docs/sampling.md``).

Calls: the draft call counts for every live row; the density call only for rows with at least
two valid drafts (as in ``assd``), and it is made only when some live row has them.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from asarm_jax.sampling import drafts
from asarm_jax.sampling import state as state_lib
from asarm_jax.sampling.network import Network
from asarm_jax.sampling.spec import SamplerSpec
from asarm_jax.sampling.state import State

Array = jnp.ndarray

DECAY = 0.7  # weight of the past in a row's running acceptance
PRIOR_ACCEPTANCE = 0.8  # a row's acceptance at every depth before its first round
FORGET = 0.05  # the step back to the prior of a depth a round did not reach
_STEPS = (1, 2, 3, 5, 8, 13, 21, 34, 55)


def sizes(spec: SamplerSpec) -> tuple[int, ...]:
  """The draft sizes ``auto`` chooses among: 1 (a sequential step), 2, 3, 5, 8, ... up to
  ``spec.k``, and ``spec.k``."""
  return tuple(sorted({s for s in _STEPS if s <= spec.k} | {spec.k}))


def describe_choices(spec: SamplerSpec, rounds_S: Any) -> str:
  """What the policy chose for a row (or a sum of rows), e.g. ``draft sizes 1: 20%, 5: 80% of
  12 rounds``."""
  rounds_S = [int(r) for r in rounds_S]
  total = max(sum(rounds_S), 1)
  shares = ", ".join(f"{k}: {100 * r / total:.0f}%" for k, r in zip(sizes(spec), rounds_S) if r)
  return f"draft sizes {shares or 'none'} of {sum(rounds_S)} rounds"


@flax.struct.dataclass
class Carry:
  """The pending block (``K = max(sizes)`` columns) and what the choice reads."""
  block: drafts.Block
  num_drafts_B: Array  # int32: the pending block's size k (its drafts beyond k are unused).
  acceptance_BxD: Array  # float32: running acceptance at depths 2..K (D = K - 1).
  rounds_BxS: Array  # int32: the row's rounds at each size.


def _index(sizes_S: tuple[int, ...], k_B: Array) -> Array:
  """The position of each ``k`` in ``sizes_S``."""
  return jnp.searchsorted(jnp.asarray(sizes_S), k_B).astype(jnp.int32)


def choose(sizes_S: tuple[int, ...], acceptance_BxD: Array, left_B: Array,
           round_ms_S: Array) -> Array:
  """The index (into ``sizes_S``) of each row's size with the most expected tokens per ms."""
  # Expected accepted drafts at k = 1..K: 1 + sum_{j=2..k} prod_{d=2..j} a_d, summed in order
  # (deterministic decoding: XLA's cumsum may pick its order per shape).
  reach_B, accepted = 1.0, [jnp.ones_like(left_B, jnp.float32)]
  for depth in range(acceptance_BxD.shape[1]):
    reach_B = reach_B * acceptance_BxD[:, depth]
    accepted.append(accepted[-1] + reach_B)
  accepted_BxK = jnp.stack(accepted, 1)
  size_S = jnp.asarray(sizes_S)
  tokens_BxS = accepted_BxK[:, size_S - 1] + (size_S >= 2)
  tokens_BxS = jnp.minimum(tokens_BxS, jnp.maximum(left_B, 1)[:, None])
  return jnp.argmax(tokens_BxS / round_ms_S, axis=1).astype(jnp.int32)


def _pad(x_BxKx: Array, num: int) -> Array:
  """``x`` with axis 1 zero-padded to ``num``."""
  return jnp.pad(x_BxKx, [(0, 0), (0, num - x_BxKx.shape[1])] + [(0, 0)] * (x_BxKx.ndim - 2))


def _propose(net: Network, params: Any, spec: SamplerSpec, state: State, index_B: Array,
             rng_B: jax.Array, content_start_B: Array, num_content: int) -> State:
  """The draft call at the largest size a live row chose (``index_B``: each row's choice in
  :func:`sizes`), its block padded to the largest size."""
  sizes_S = sizes(spec)
  largest = jnp.max(jnp.where(state_lib.live(state), index_B, 0))

  def draft(k: int):
    def call(state: State) -> State:
      state = drafts.next_block(net, params, state, k, rng_B, content_start_B, num_content)
      block = state.carry
      return state.replace(carry=drafts.Block(_pad(block.drafts_BxK, sizes_S[-1]),
                                              _pad(block.logq_BxKxV, sizes_S[-1]),
                                              block.exact_first_B))
    return call

  return jax.lax.switch(largest, [draft(k) for k in sizes_S], state)


def init(net: Network, params: Any, spec: SamplerSpec, state: State, use_cache: bool) -> State:
  """The prefill drafts a block of the largest size; each row's first size is chosen from the
  prior acceptance."""
  sizes_S = sizes(spec)
  batch = state.num_decoded_B.shape[0]
  acceptance_BxD = jnp.full((batch, sizes_S[-1] - 1), PRIOR_ACCEPTANCE, jnp.float32)
  index_B = choose(sizes_S, acceptance_BxD, state.num_target_B - state.num_decoded_B,
                   state.round_ms_S)
  state = drafts.first_block(net, params, state, sizes_S[-1], use_cache)
  return state.replace(carry=Carry(state.carry, jnp.asarray(sizes_S)[index_B], acceptance_BxD,
                                   jnp.zeros((batch, len(sizes_S)), jnp.int32)))


def round_calls(spec: SamplerSpec, state: State) -> Array:
  """The draft call, and the density call if a live row's block has two drafts or more."""
  k_B = jnp.where(state_lib.live(state), state.carry.num_drafts_B, 1)
  return 1 + (jnp.max(k_B) >= 2).astype(jnp.int32)


def rounds_by_size(spec: SamplerSpec, state: State) -> Array:
  return state.carry.rounds_BxS


def _update(acceptance_BxD: Array, live_B: Array, num_valid_B: Array,
            num_accepted_B: Array) -> Array:
  """The running acceptance after a verification: depth ``d`` is reached when the ``d - 1``
  drafts before it were accepted, and it is accepted when ``d`` drafts were; a live row's
  depths not reached step back toward the prior."""
  depth_D = jnp.arange(2, acceptance_BxD.shape[1] + 2)
  reached_BxD = (live_B[:, None] & (depth_D <= num_valid_B[:, None])
                 & (num_accepted_B[:, None] >= depth_D - 1))
  accepted_BxD = (num_accepted_B[:, None] >= depth_D).astype(jnp.float32)
  forgotten_BxD = acceptance_BxD + FORGET * (PRIOR_ACCEPTANCE - acceptance_BxD)
  return jnp.where(reached_BxD, DECAY * acceptance_BxD + (1 - DECAY) * accepted_BxD,
                   jnp.where(live_B[:, None], forgotten_BxD, acceptance_BxD))


def round(net: Network, params: Any, spec: SamplerSpec, state: State) -> State:
  sizes_S = sizes(spec)
  rng_B, rng_draft_B, rng_verify_B = state_lib.split(state.rng_B, 3)
  carry, n_B, num_target_B = state.carry, state.num_decoded_B, state.num_target_B
  live_B, k_B = state_lib.live(state), carry.num_drafts_B
  num_valid_B = jnp.where(live_B, jnp.minimum(k_B, num_target_B - n_B), 0)
  has_bonus_B = (k_B >= 2) & (n_B + k_B < num_target_B)
  drafted_rank_BxL = state_lib.write(state.tokens_rank_BxL, n_B, carry.block.drafts_BxK,
                                     num_valid_B)

  def density(k: int):
    def call(state: State) -> tuple[Array, Any]:
      target_BxK1, valid_BxK1 = state_lib.targets(n_B, num_target_B, k + 1)
      logp_BxK1xV, cache = state_lib.call(net, params, state, drafted_rank_BxL, target_BxK1,
                                          valid_BxK1, None, n_B, k)
      return _pad(logp_BxK1xV, sizes_S[-1] + 1), cache
    return call

  def no_call(state: State) -> tuple[Array, Any]:  # every live block is a lone exact draft
    return jnp.zeros((n_B.shape[0], sizes_S[-1] + 1, net.vocab_size), jnp.float32), state.cache

  largest = jnp.max(jnp.where(live_B, _index(sizes_S, k_B), 0))
  logp_BxK1xV, cache = jax.lax.switch(largest, [no_call] + [density(k) for k in sizes_S[1:]],
                                      state)
  tokens_BxK1, num_new_B, num_accepted_B = drafts.verify(rng_verify_B, carry.block,
                                                         logp_BxK1xV, num_valid_B, has_bonus_B)
  num_cached_B = jnp.where(largest > 0, n_B + num_accepted_B, state.num_cached_B)
  state = state.replace(cache=cache, num_calls_B=state.num_calls_B + (num_valid_B >= 2))
  state = state_lib.commit(state, tokens_BxK1, jnp.where(live_B, num_new_B, 0), num_cached_B)
  acceptance_BxD = _update(carry.acceptance_BxD, live_B, num_valid_B, num_accepted_B)
  rounds_BxS = carry.rounds_BxS + (live_B[:, None]
                                   & (jnp.arange(len(sizes_S)) == _index(sizes_S, k_B)[:, None]))
  index_B = choose(sizes_S, acceptance_BxD, num_target_B - state.num_decoded_B,
                   state.round_ms_S)
  state = _propose(net, params, spec, state, index_B, rng_draft_B, state.num_cached_B, 1)
  return state.replace(carry=Carry(state.carry, jnp.asarray(sizes_S)[index_B], acceptance_BxD,
                                   rounds_BxS), rng_B=rng_B)
