"""A tabulated joint that stands in for the network in the samplers' exactness tests.

``p(x) = sum_z w_z init_z(x_0) prod_i trans_{z,i}(x_i, x_{i+1})``: a mixture of two Markov
chains over ``length`` positions of ``vocab`` symbols (token ids ``num_special + symbol``).
The mixture makes every conditional depend on every known token (through the posterior of
``z``), and the position-dependent transitions make it depend on true positions, never ranks.

:class:`MixtureOfChains` answers a sampler's calls exactly as the
:class:`asarm_jax.sampling.Network` contract says: a query row for target rank ``t`` sees the
tokens of ranks ``< min(t, num_decoded)`` and, for tree rows, of its node's ancestors; with a
cache it reads the tokens the cache slots hold (written by the content rows of each call), so
a slot the loop forgot to write or wrongly adopted changes the answer. :func:`brute_force`
computes the same conditionals from the full table, independently.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import distribution, forward


def random_params(seed: int, length: int, vocab: int, concentration: float = 0.3) -> dict:
  """Mixture weights ``Z``, initial ``Z x V`` and transitions ``Z x (L-1) x V x V``, drawn
  from Dirichlets (a small concentration gives strong dependence between neighbours)."""
  rs = np.random.default_rng(seed)
  return {"weights_Z": np.asarray([0.4, 0.6], np.float32),
          "init_ZxV": rs.dirichlet(np.ones(vocab), 2).astype(np.float32),
          "trans_ZxLxVxV": rs.dirichlet(np.full(vocab, concentration),
                                        (2, length - 1, vocab)).astype(np.float32)}


def table(params: dict) -> np.ndarray:
  """The joint over all ``V^L`` sequences, float64 with one axis per position."""
  init, trans = np.asarray(params["init_ZxV"], np.float64), np.asarray(params["trans_ZxLxVxV"],
                                                                       np.float64)
  total = 0.0
  for z, weight in enumerate(np.asarray(params["weights_Z"], np.float64)):
    joint = init[z]
    for i in range(trans.shape[1]):
      joint = joint[..., None] * trans[z, i].reshape((1,) * i + trans[z, i].shape)
    total = total + weight * joint
  return total


def brute_force(joint: np.ndarray, known: dict[int, int], target: int) -> np.ndarray:
  """``p(x_target | x_known)`` (``V``) by summing the table."""
  index = tuple(known.get(i, slice(None)) for i in range(joint.ndim))
  restricted = joint[index]
  free = [i for i in range(joint.ndim) if i not in known]
  marginal = restricted.sum(axis=tuple(a for a, i in enumerate(free) if i != target))
  return marginal / marginal.sum()


def sequential_joint(joint: np.ndarray, known: dict[int, int], hidden_in_order: list[int],
                     temperatures: tuple[float, ...]) -> dict[float, np.ndarray]:
  """For each temperature, the probabilities of all ``V^h`` completions (lexicographic over
  the hidden positions in position order) under one-token-at-a-time sampling in
  ``hidden_in_order`` (each conditional raised to ``1/T`` and renormalised)."""
  vocab, hidden = joint.shape[0], sorted(hidden_in_order)
  out = {t: np.zeros((vocab,) * len(hidden)) for t in temperatures}

  def extend(evidence: dict[int, int], probs: dict[float, float], step: int) -> None:
    if step == len(hidden_in_order):
      for t in temperatures:
        out[t][tuple(evidence[i] for i in hidden)] = probs[t]
      return
    position = hidden_in_order[step]
    conditional = brute_force(joint, evidence, position)
    for value in range(vocab):
      tempered = {t: probs[t] * conditional[value] ** (1 / t) / (conditional ** (1 / t)).sum()
                  for t in temperatures}
      extend({**evidence, position: value}, tempered, step + 1)

  extend(dict(known), {t: 1.0 for t in temperatures}, 0)
  return {t: p.reshape(-1) for t, p in out.items()}


@dataclasses.dataclass(frozen=True)
class MixtureOfChains:
  """The joint as a :class:`asarm_jax.sampling.Network` (params: :func:`random_params`)."""
  length: int
  vocab: int
  num_special_tokens: int

  @property
  def vocab_size(self) -> int:
    return self.num_special_tokens + self.vocab

  def prepare(self, params: Any) -> Any:
    return params

  def init_cache(self, batch: int, num_slots: int) -> dict:
    """Slot tokens and positions; ``-1``: never written."""
    return {"tokens_BxS": jnp.full((batch, num_slots), -1, jnp.int32),
            "positions_BxS": jnp.full((batch, num_slots), -1, jnp.int32)}

  def __call__(self, params: Any, tokens_rank_BxL, perm_BxL, num_visible_B, target_rank_BxK,
               target_valid_BxK, num_decoded=None, *, cache=None, content_rank_BxR=None,
               tree: forward.TreeRows | None = None, head: bool = True):
    """The conditionals as logits; ``head`` changes nothing (the features are the logits)."""
    batch, length = tokens_rank_BxL.shape
    if cache is None:
      slot_tokens_BxS, slot_positions_BxS = tokens_rank_BxL, perm_BxL
    else:
      rows_Bx1 = jnp.arange(batch)[:, None]
      num_slots = cache["tokens_BxS"].shape[1]
      safe_BxR = jnp.clip(content_rank_BxR, 0, length - 1)
      slots_BxR = jnp.where(content_rank_BxR < length, content_rank_BxR, num_slots)
      tokens_BxR = jnp.take_along_axis(tokens_rank_BxL, safe_BxR, 1)
      positions_BxR = jnp.take_along_axis(perm_BxL, safe_BxR, 1)
      if tree is not None:
        num_nodes = tree.tokens_BxN.shape[1]
        slots_BxR = jnp.concatenate([slots_BxR, length + jnp.broadcast_to(
            jnp.arange(num_nodes), (batch, num_nodes))], 1)
        tokens_BxR = jnp.concatenate([tokens_BxR, tree.tokens_BxN], 1)
        positions_BxR = jnp.concatenate([positions_BxR, jnp.take_along_axis(
            perm_BxL, jnp.clip(tree.rank_BxN, 0, length - 1), 1)], 1)
      cache = {"tokens_BxS": cache["tokens_BxS"].at[rows_Bx1, slots_BxR].set(tokens_BxR,
                                                                             mode="drop"),
               "positions_BxS": cache["positions_BxS"].at[rows_Bx1, slots_BxR].set(
                   positions_BxR, mode="drop")}
      slot_tokens_BxS, slot_positions_BxS = cache["tokens_BxS"], cache["positions_BxS"]
    limit_BxK = target_rank_BxK
    if num_decoded is not None:
      limit_BxK = jnp.minimum(limit_BxK,
                              num_decoded if num_decoded.ndim == 2 else num_decoded[:, None])
    slot_S = jnp.arange(slot_tokens_BxS.shape[1])
    sees_BxKxS = slot_S < limit_BxK[:, :, None]
    if tree is not None:
      node_BxK = tree.target_node_BxK
      key_node_S = slot_S - length
      anc_BxKxN = jnp.take_along_axis(tree.ancestors_BxNxN, jnp.maximum(node_BxK, 0)[:, :, None],
                                      1)
      on_path_BxKxS = jnp.take_along_axis(
          anc_BxKxN, jnp.broadcast_to(jnp.clip(key_node_S, 0, anc_BxKxN.shape[2] - 1),
                                      sees_BxKxS.shape), 2)
      sees_BxKxS |= on_path_BxKxS & (key_node_S >= 0) & (node_BxK[:, :, None] >= 0)
    target_position_BxK = jnp.take_along_axis(perm_BxL, jnp.clip(target_rank_BxK, 0, length - 1),
                                              1)
    logp_BxKxV = self._conditionals(params, sees_BxKxS & target_valid_BxK[:, :, None],
                                    slot_tokens_BxS, slot_positions_BxS, target_position_BxK)
    logits = jnp.concatenate([jnp.zeros(logp_BxKxV.shape[:2] + (self.num_special_tokens,)),
                              logp_BxKxV], -1)
    return logits if cache is None else (logits, cache)

  def head(self, params: Any, features_BxKxV: Any) -> Any:
    """The identity: :meth:`__call__` returns logits as its features."""
    return features_BxKxV

  def log_probs(self, logits_BxKxV: Any, temperature: Any) -> Any:
    return distribution.log_probs(logits_BxKxV, self.num_special_tokens, temperature)

  def _conditionals(self, params, sees_BxKxS, slot_tokens_BxS, slot_positions_BxS,
                    target_position_BxK):
    """``log p(x_target | seen slots)`` (``B x K x V``) by forward-backward on each chain."""
    onehot_BxSxL = jax.nn.one_hot(slot_positions_BxS, self.length)  # -1 (unwritten): zeros
    symbol_BxS = jnp.clip(slot_tokens_BxS - self.num_special_tokens, 0, self.vocab - 1)
    sees = sees_BxKxS.astype(jnp.float32)
    known_BxKxL = jnp.einsum("bks,bsl->bkl", sees, onehot_BxSxL) > 0
    symbol_BxKxL = jnp.einsum("bks,bsl->bkl", sees, onehot_BxSxL * symbol_BxS[:, :, None])
    evidence_BxKxLxV = jnp.where(known_BxKxL[..., None],
                                 jax.nn.one_hot(symbol_BxKxL.astype(jnp.int32), self.vocab), 1.0)
    init_ZxV, trans_ZxLxVxV = params["init_ZxV"], params["trans_ZxLxVxV"]
    alpha = [init_ZxV * evidence_BxKxLxV[:, :, None, 0]]  # B x K x Z x V each
    for i in range(self.length - 1):
      alpha.append(jnp.einsum("bkzu,zuv->bkzv", alpha[-1], trans_ZxLxVxV[:, i])
                   * evidence_BxKxLxV[:, :, None, i + 1])
    beta = [jnp.ones_like(alpha[0])]
    for i in reversed(range(self.length - 1)):
      beta.insert(0, jnp.einsum("zuv,bkzv->bkzu", trans_ZxLxVxV[:, i],
                                evidence_BxKxLxV[:, :, None, i + 1] * beta[0]))
    both_BxKxLxZxV = jnp.stack(alpha, 2) * jnp.stack(beta, 2)
    at_target_BxKxZxV = jnp.take_along_axis(
        both_BxKxLxZxV, target_position_BxK[:, :, None, None, None], 2)[:, :, 0]
    mixed_BxKxV = jnp.einsum("z,bkzv->bkv", params["weights_Z"], at_target_BxKxZxV)
    return jnp.log(mixed_BxKxV / mixed_BxKxV.sum(-1, keepdims=True))
