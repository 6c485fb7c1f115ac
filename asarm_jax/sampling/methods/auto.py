"""``auto``: fused ASSD whose draft size every row chooses each round from its own past.

A round is one fused call (:func:`asarm_jax.sampling.methods.assd_fused.verify_and_draft`):
it verifies each row's pending block of ``k`` drafts, commits the accepted drafts plus a
residual or bonus token, and drafts the row's next block, of the size the row chose before the
call from :func:`sizes`. Size 0 is a sequential step: no drafts, the call's one row per batch
row gives the exact conditional of the next rank.

**The choice.** A row keeps a running acceptance ``a_d`` for each draft depth ``d >= 1``: an
exponential average (weight :data:`DECAY` on the past, prior :data:`PRIOR_ACCEPTANCE`) of
whether the draft at depth ``d`` was accepted, over the row's rounds that reached ``d`` (the
prefill's first draft is exact and always accepted, so it is not counted); in a round that does
not reach ``d``, ``a_d`` moves a step :data:`FORGET` back to the prior, so a row that turned
sequential probes drafting again after a while. A block of ``k`` drafts is expected to commit
``E(k) = 1 + sum_{j=1..k} prod_{d=1..j} a_d`` tokens (at most the tokens left), and a round at
size ``k`` costs ``round_ms_S[k]`` (:mod:`asarm_jax.sampling.cost_model`, at this number of
slots; a call each without a measurement, and with deterministic decoding). The row takes the
size with the most ``E(k) / round_ms(k)`` (ties: the smaller). The batch's call is made at the
largest size a live row holds or chose (one compiled shape per size, picked by ``lax.switch``);
a row verifies its own ``k`` drafts, reads no density or draft rows beyond its own, and each
draw has its own key (:func:`asarm_jax.sampling.state.draw`), so a row's sample does not depend
on its neighbours. With ``spec.size_choice="batch"`` the batch takes one size instead: the one
with the most expected tokens of all live rows together per ms, so that no row pays a call
larger than its own drafts (at batch 64 rows that chose 1 paid a call of size 3); a row's
tokens then depend on its neighbours' past, in their values, not in their law.

**Exact.** A row's next size is a function of its past (its committed tokens and
acceptances; per batch, of every row's, drawn with keys its future draws do not share), fixed
before the call that drafts that block. Given the past, a round verifies a block of a fixed
size by speculative sampling, whose committed tokens follow the model's sequential
conditionals whatever the proposal (:func:`asarm_jax.sampling.drafts.verify`), so the tokens'
law is the sequential one whatever rule picks ``k`` from the past (``docs/sampling.md``).

Calls: one a round, counted for every live row except a lone exact draft (as ``assd_fused``).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from asarm_jax.sampling import drafts
from asarm_jax.sampling import state as state_lib
from asarm_jax.sampling.methods import assd_fused
from asarm_jax.sampling.network import Network
from asarm_jax.sampling.spec import SamplerSpec
from asarm_jax.sampling.state import State

Array = jnp.ndarray

DECAY = 0.7  # weight of the past in a row's running acceptance
PRIOR_ACCEPTANCE = 0.8  # a row's acceptance at every depth before its first round
FORGET = 0.05  # the step back to the prior of a depth a round did not reach
_STEPS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55)

CALLS_PER_ROUND = 1  # network calls of one round, for the whole batch


def sizes(spec: SamplerSpec) -> tuple[int, ...]:
  """The draft sizes ``auto`` chooses among: 0 (a sequential step), 1, 2, 3, 5, 8, ... up to
  ``spec.k``, and ``spec.k``."""
  return tuple(sorted({s for s in _STEPS if s <= spec.k} | {spec.k}))


def describe_choices(spec: SamplerSpec, rounds_S: Any) -> str:
  """What the policy chose for a row (or a sum of rows), e.g. ``draft sizes 0: 20%, 5: 80% of
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
  acceptance_BxD: Array  # float32: running acceptance at depths 1..K (D = K).
  rounds_BxS: Array  # int32: the row's rounds at each size.


def _index(sizes_S: tuple[int, ...], k_B: Array) -> Array:
  """The position of each ``k`` in ``sizes_S`` (sorted): the sizes below it, counted with one
  comparison (``jnp.searchsorted`` is a nested loop of the round on the GPU)."""
  return jnp.sum(k_B[:, None] > jnp.asarray(sizes_S), axis=1, dtype=jnp.int32)


def choose(sizes_S: tuple[int, ...], acceptance_BxD: Array, left_B: Array,
           round_ms_S: Array, batch_B: Array | None = None) -> Array:
  """The index (into ``sizes_S``) of each row's size with the most expected tokens per ms;
  with ``batch_B`` (bool: the rows that count), one index for all rows: the size with the most
  expected tokens of those rows together per ms."""
  # Expected tokens at k = 0..K: 1 + sum_{j=1..k} prod_{d=1..j} a_d, summed in order
  # (deterministic decoding: XLA's cumsum may pick its order per shape).
  reach_B, expected = 1.0, [jnp.ones_like(left_B, jnp.float32)]
  for depth in range(acceptance_BxD.shape[1]):
    reach_B = reach_B * acceptance_BxD[:, depth]
    expected.append(expected[-1] + reach_B)
  tokens_BxS = jnp.stack(expected, 1)[:, jnp.asarray(sizes_S)]
  tokens_BxS = jnp.minimum(tokens_BxS, jnp.maximum(left_B, 1)[:, None])
  if batch_B is not None:
    tokens_BxS = jnp.broadcast_to(jnp.sum(jnp.where(batch_B[:, None], tokens_BxS, 0.0), 0),
                                  tokens_BxS.shape)
  return jnp.argmax(tokens_BxS / round_ms_S, axis=1).astype(jnp.int32)


def _pad(x_BxKx: Array, num: int) -> Array:
  """``x`` with axis 1 zero-padded to ``num``."""
  return jnp.pad(x_BxKx, [(0, 0), (0, num - x_BxKx.shape[1])] + [(0, 0)] * (x_BxKx.ndim - 2))


def _padded(block: drafts.Block, num: int) -> drafts.Block:
  return drafts.Block(_pad(block.drafts_BxK, num), _pad(block.logq_BxKxV, num),
                      block.exact_first_B)


def init(net: Network, params: Any, spec: SamplerSpec, state: State, use_cache: bool) -> State:
  """The prefill drafts a block of the largest size; each row's first size is chosen from the
  prior acceptance, at least 1 (the prefill's first draft is exact: it costs no call)."""
  sizes_S = sizes(spec)
  batch = state.num_decoded_B.shape[0]
  acceptance_BxD = jnp.full((batch, sizes_S[-1]), PRIOR_ACCEPTANCE, jnp.float32)
  index_B = choose(sizes_S, acceptance_BxD, state.num_target_B - state.num_decoded_B,
                   state.round_ms_S, _counted(spec, state))
  state = drafts.first_block(net, params, state, sizes_S[-1], use_cache)
  return state.replace(carry=Carry(state.carry, jnp.maximum(jnp.asarray(sizes_S)[index_B], 1),
                                   acceptance_BxD, jnp.zeros((batch, len(sizes_S)), jnp.int32)))


def _counted(spec: SamplerSpec, state: State) -> Array | None:
  """The rows whose past chooses the batch's size (``size_choice="batch"``: the live ones), or
  None: each row chooses its own."""
  return state_lib.live(state) if spec.size_choice == "batch" else None


def rounds_by_size(spec: SamplerSpec, state: State) -> Array:
  return state.carry.rounds_BxS


def _update(acceptance_BxD: Array, live_B: Array, num_valid_B: Array, num_accepted_B: Array,
            exact_first_B: Array) -> Array:
  """The running acceptance after a verification: depth ``d`` is reached when the ``d - 1``
  drafts before it were accepted (depth 1 not when its draft was exact), and it is accepted
  when ``d`` drafts were; a live row's depths not reached step back toward the prior."""
  depth_D = jnp.arange(1, acceptance_BxD.shape[1] + 1)
  reached_BxD = (live_B[:, None] & (depth_D <= num_valid_B[:, None])
                 & (num_accepted_B[:, None] >= depth_D - 1)
                 & ~((depth_D == 1) & exact_first_B[:, None]))
  accepted_BxD = (num_accepted_B[:, None] >= depth_D).astype(jnp.float32)
  forgotten_BxD = acceptance_BxD + FORGET * (PRIOR_ACCEPTANCE - acceptance_BxD)
  return jnp.where(reached_BxD, DECAY * acceptance_BxD + (1 - DECAY) * accepted_BxD,
                   jnp.where(live_B[:, None], forgotten_BxD, acceptance_BxD))


def _step(net: Network, params: Any, state: State, rng_verify_B: jax.Array,
          num_drafts: int) -> tuple[State, Array, Array, Array, drafts.Block]:
  """The call when no live row holds or chose drafts: one density row per batch row, the
  exact conditional of rank ``n``, whose draw is the bonus draw of :func:`drafts.verify` (the
  same key: a row's token does not depend on which branch its neighbours put the call in)."""
  n_B, num_target_B = state.num_decoded_B, state.num_target_B
  target_Bx1, valid_Bx1 = state_lib.targets(n_B, num_target_B, 1)
  features_Bx1xF, cache = state_lib.call(net, params, state, state.tokens_rank_BxL, target_Bx1,
                                         valid_Bx1, None, state.num_cached_B, 1, head=False)
  logp_Bx1xV = state_lib.log_probs(net, params, state, features_Bx1xF)
  rng_bonus_B = state_lib.split(rng_verify_B, 3)[2]
  tokens_Bx1 = state_lib.draw(rng_bonus_B, logp_Bx1xV[:, 0])[:, None].astype(jnp.int32)
  batch, vocab = logp_Bx1xV.shape[0], logp_Bx1xV.shape[-1]
  empty = drafts.Block(jnp.zeros((batch, num_drafts), jnp.int32),
                       jnp.zeros((batch, num_drafts, vocab), logp_Bx1xV.dtype),
                       jnp.zeros_like(n_B, bool))
  return (state.replace(cache=cache), _pad(tokens_Bx1, num_drafts + 1),
          state_lib.live(state).astype(jnp.int32), jnp.zeros_like(n_B), empty)


def round(net: Network, params: Any, spec: SamplerSpec, state: State) -> State:
  sizes_S = sizes(spec)
  largest_size = sizes_S[-1]
  rng_B, rng_draft_B, rng_verify_B = state_lib.split(state.rng_B, 3)
  carry, n_B, num_target_B = state.carry, state.num_decoded_B, state.num_target_B
  live_B, k_B = state_lib.live(state), carry.num_drafts_B
  num_valid_B = jnp.where(live_B, jnp.minimum(k_B, num_target_B - n_B), 0)
  has_bonus_B = live_B & (n_B + k_B < num_target_B)
  # The next block's size, from the past only (before this round's verification).
  next_index_B = choose(sizes_S, carry.acceptance_BxD, num_target_B - n_B - 1, state.round_ms_S,
                        _counted(spec, state))
  next_k_B = jnp.asarray(sizes_S)[next_index_B]

  def fused(k: int):
    def call(state: State) -> tuple[State, Array, Array, Array, drafts.Block]:
      block = drafts.Block(carry.block.drafts_BxK[:, :k], carry.block.logq_BxKxV[:, :k],
                           carry.block.exact_first_B)
      state, tokens_BxK1, num_new_B, num_accepted_B, block = assd_fused.verify_and_draft(
          net, params, state, block, k, num_valid_B, has_bonus_B, rng_draft_B, rng_verify_B)
      return (state, _pad(tokens_BxK1, largest_size + 1), num_new_B, num_accepted_B,
              _padded(block, largest_size))
    return call

  largest = jnp.max(jnp.where(live_B, _index(sizes_S, jnp.maximum(k_B, next_k_B)), 0))
  branches = [lambda state: _step(net, params, state, rng_verify_B, largest_size)]
  branches += [fused(k) for k in sizes_S[1:]]
  calls_B = assd_fused.calls(state, carry.block, num_valid_B)
  state, tokens_BxK1, num_new_B, num_accepted_B, next_block = jax.lax.switch(
      largest, branches, state)
  state = state.replace(num_calls_B=state.num_calls_B + calls_B)
  state = state_lib.commit(state, tokens_BxK1, jnp.where(live_B, num_new_B, 0),
                           n_B + num_accepted_B)
  acceptance_BxD = _update(carry.acceptance_BxD, live_B, num_valid_B, num_accepted_B,
                           carry.block.exact_first_B)
  rounds_BxS = carry.rounds_BxS + (live_B[:, None]
                                   & (jnp.arange(len(sizes_S)) == _index(sizes_S, k_B)[:, None]))
  return state.replace(carry=Carry(next_block, next_k_B, acceptance_BxD, rounds_BxS),
                       rng_B=rng_B)
