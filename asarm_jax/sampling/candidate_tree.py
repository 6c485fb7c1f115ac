"""Candidate trees for exact tree decoding: build one from proposals, walk it with exact draws.

A tree holds ``N`` candidate tokens for the ranks after the committed prefix: node ``u`` is a
candidate for rank ``n + depth[u]`` whose path (its ancestors, then itself) is a candidate
continuation; the root is the committed prefix (``parent = -1``). Parents come before their
children, siblings carry distinct tokens, and a valid node's ancestors are valid.

One network call gives, for the root and every node, the *exact* conditional of the next rank
given that path (see :mod:`asarm_jax.sampling.core`). :func:`walk` then draws the root's next
token; while the draw is a child of the current node it moves there and draws from the child's
row. The first draw that is not a child is committed too and ends the round. Every draw comes
from the exact conditional given the realised prefix, and the tree is built from the history
only, so the tokens follow the sequential joint with no rejection step.

Trees are built from two kinds of proposals (:func:`build`):

* *draft marginals* ``q_l`` for the ranks ``n .. n+D-1``, all conditioned on the same path:
  the ``N`` sequences with the largest ``prod_l q_l(x_l)`` form a tree (a longer sequence
  never scores more than its prefix), found level by level with a beam of width ``N``;
* a *prompt-lookup chain*: the tokens that followed the latest earlier occurrence, in the
  visible or committed text, of the ``g`` tokens before the next position (:func:`ngram_chain`).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jnp.ndarray


class Tree(NamedTuple):
  """``N`` nodes per row: token, parent node (``-1``: root), depth (rank offset), validity."""
  tokens_BxN: Array
  parent_BxN: Array
  depth_BxN: Array
  valid_BxN: Array


def _take(x_BxN: Array, index_BxK: Array) -> Array:
  """``x[b, index[b, k]]`` with ``index`` clipped into range (callers mask the misses)."""
  return jnp.take_along_axis(x_BxN, jnp.clip(index_BxK, 0, x_BxN.shape[1] - 1), 1)


def ancestors(tree: Tree, depth: int) -> Array:
  """bool ``B x N x N``: ``[b, u, v]`` is True iff ``v`` is ``u`` or one of its ancestors
  (paths are at most ``depth`` nodes long)."""
  batch, num_nodes = tree.parent_BxN.shape
  eye_BxNxN = jnp.broadcast_to(jnp.eye(num_nodes, dtype=bool), (batch, num_nodes, num_nodes))
  has_parent_BxN = tree.parent_BxN >= 0

  parent_BxNx1 = jnp.clip(tree.parent_BxN, 0, num_nodes - 1)[:, :, None]
  anc_BxNxN = eye_BxNxN
  for _ in range(depth - 1):  # unrolled: a loop would be a nested loop of the round
    from_parent = jnp.take_along_axis(anc_BxNxN, parent_BxNx1, 1)
    anc_BxNxN = eye_BxNxN | (from_parent & has_parent_BxN[:, :, None])
  return anc_BxNxN


def product_tree(logq_BxDxV: Array, num_nodes: int) -> Tree:
  """The ``num_nodes`` sequences of largest ``sum_l log q_l(x_l)`` (lengths 1..D) as a tree.

  Ties go to the shallower node, so every chosen node's parent is chosen and comes first.
  Nodes of score ``-inf`` (e.g. special tokens) are invalid.
  """
  batch, depth, vocab = logq_BxDxV.shape
  width = min(num_nodes, vocab)
  top_logq_BxDxW, top_token_BxDxW = jax.lax.top_k(logq_BxDxV, width)
  scores, tokens, parents = [top_logq_BxDxW[:, 0]], [top_token_BxDxW[:, 0]], [
      jnp.full((batch, width), -1, jnp.int32)]
  offset = 0  # global index of the previous level's first entry
  for level in range(1, depth):
    prev = scores[-1]
    cand_BxPW = (prev[:, :, None] + top_logq_BxDxW[:, level][:, None, :]).reshape(batch, -1)
    beam = min(num_nodes, cand_BxPW.shape[1])
    best_BxP, index_BxP = jax.lax.top_k(cand_BxPW, beam)
    scores.append(best_BxP)
    tokens.append(jnp.take_along_axis(top_token_BxDxW[:, level], index_BxP % width, 1))
    parents.append(offset + (index_BxP // width).astype(jnp.int32))
    offset += prev.shape[1]
  depths = [jnp.full(s.shape, level, jnp.int32) for level, s in enumerate(scores)]
  score_BxG, token_BxG, parent_BxG, depth_BxG = (
      jnp.concatenate(x, 1) for x in (scores, tokens, parents, depths))
  # Stable sort on -score: equal scores keep the level-major order, parents first.
  order_BxG = jnp.argsort(-score_BxG, axis=1, stable=True)[:, :num_nodes]
  chosen = order_BxG.shape[1]
  node_of_global_BxG = jnp.full(score_BxG.shape, -1, jnp.int32).at[
      jnp.arange(batch)[:, None], order_BxG].set(jnp.arange(chosen, dtype=jnp.int32))
  parent_global_BxN = jnp.take_along_axis(parent_BxG, order_BxG, 1)
  parent_BxN = jnp.where(parent_global_BxN >= 0, _take(node_of_global_BxG, parent_global_BxN),
                         -1)
  tree = Tree(jnp.take_along_axis(token_BxG, order_BxG, 1).astype(jnp.int32), parent_BxN,
              jnp.take_along_axis(depth_BxG, order_BxG, 1),
              jnp.isfinite(jnp.take_along_axis(score_BxG, order_BxG, 1)))
  missing = num_nodes - chosen  # fewer candidates than nodes (tiny vocabularies)
  return tree if not missing else Tree(*(
      jnp.pad(x, ((0, 0), (0, missing)), constant_values=fill)
      for x, fill in zip(tree, (0, -1, 0, False))))


def ngram_chain(tokens_BxL: Array, known_BxL: Array, perm_BxL: Array, first_rank_B: Array,
                num_target_B: Array, depth: int, ngram: int) -> tuple[Array, Array]:
  """Prompt lookup: a candidate chain (``B x D`` tokens, validity) for ranks ``first..``.

  Everything is in position space (``known_BxL``: visible or committed). The ``ngram``
  tokens before the position ``p`` of rank ``first`` are looked up among the known text; at the
  latest match before ``p`` (else the earliest after it) the chain proposes, for rank
  ``first + i``, the token at the same offset from the match as rank ``first + i``'s position
  is from ``p`` (so visible positions between hidden ones keep their alignment).
  """
  batch, length = tokens_BxL.shape
  rank_BxD = first_rank_B[:, None] + jnp.arange(depth, dtype=jnp.int32)
  position_BxD = _take(perm_BxL, rank_BxD)
  p_B = position_BxD[:, 0]
  j_L = jnp.arange(length, dtype=jnp.int32)
  match_BxL = (j_L != p_B[:, None]) & known_BxL
  for back in range(1, ngram + 1):
    key_pos_B = p_B - back
    key_ok_B = (key_pos_B >= 0) & _take(known_BxL, key_pos_B[:, None])[:, 0]
    key_B = _take(tokens_BxL, key_pos_B[:, None])[:, 0]
    shifted_tokens = jnp.pad(tokens_BxL, ((0, 0), (back, 0)))[:, :length]
    shifted_known = jnp.pad(known_BxL, ((0, 0), (back, 0)))[:, :length]
    match_BxL &= shifted_known & (shifted_tokens == key_B[:, None]) & key_ok_B[:, None]
  priority_BxL = jnp.where(j_L < p_B[:, None], j_L, j_L - 2 * length)
  start_B = jnp.argmax(jnp.where(match_BxL, priority_BxL, -4 * length), axis=1)
  source_BxD = start_B[:, None] + position_BxD - p_B[:, None]
  ok_BxD = ((source_BxD >= 0) & (source_BxD < length) & _take(known_BxL, source_BxD)
            & (rank_BxD < num_target_B[:, None]) & match_BxL.any(1)[:, None])
  return _take(tokens_BxL, source_BxD), jnp.cumprod(ok_BxD, axis=1).astype(bool)


def add_chain(tree: Tree, chain_BxD: Array, chain_valid_BxD: Array, num_slots: int) -> Tree:
  """Appends ``num_slots`` nodes that continue ``chain`` from its deepest level in ``tree``."""
  depth = chain_BxD.shape[1]
  num_nodes = tree.tokens_BxN.shape[1]
  own_BxN = (tree.valid_BxN & (tree.tokens_BxN == _take(chain_BxD, tree.depth_BxN))
             & _take(chain_valid_BxD, tree.depth_BxN))
  on_chain_BxN = own_BxN & (tree.parent_BxN < 0)
  for _ in range(depth - 1):  # on the chain: own token matches and so does the parent
    on_chain_BxN = own_BxN & ((tree.parent_BxN < 0) | _take(on_chain_BxN, tree.parent_BxN))
  covered_B = jnp.max(jnp.where(on_chain_BxN, tree.depth_BxN + 1, 0), axis=1)
  attach_B = jnp.where(covered_B > 0, jnp.argmax(
      on_chain_BxN & (tree.depth_BxN == covered_B[:, None] - 1), axis=1), -1).astype(jnp.int32)
  slot_C = jnp.arange(num_slots, dtype=jnp.int32)
  level_BxC = covered_B[:, None] + slot_C
  parent_BxC = jnp.where(slot_C == 0, attach_B[:, None], num_nodes + slot_C - 1)
  chain = Tree(_take(chain_BxD, level_BxC), parent_BxC, level_BxC,
               (level_BxC < depth) & _take(chain_valid_BxD, level_BxC))
  return Tree(*(jnp.concatenate(pair, 1) for pair in zip(tree, chain)))


def build(logq_BxDxV: Array, chain: tuple[Array, Array] | None, num_nodes: int,
          first_rank_B: Array, num_target_B: Array) -> Tree:
  """The tree for ranks ``first..``: ``num_nodes`` nodes in all, of which ``min(D, N // 2)``
  continue the prompt-lookup ``chain`` (if given) and the rest come from the marginals."""
  depth = logq_BxDxV.shape[1]
  num_slots = min(depth, num_nodes // 2) if chain is not None else 0
  tree = product_tree(logq_BxDxV, num_nodes - num_slots)
  if num_slots:
    tree = add_chain(tree, *chain, num_slots)
  in_range_BxN = first_rank_B[:, None] + tree.depth_BxN < num_target_B[:, None]
  return tree._replace(valid_BxN=tree.valid_BxN & in_range_BxN)


def walk(tree: Tree, draws_BxN1: Array, depth: int) -> tuple[Array, Array, Array, Array]:
  """Walks the tree with the exact draws (``draws[:, 0]`` the root's, ``draws[:, 1 + u]``
  node ``u``'s); paths are at most ``depth`` nodes long. Returns the path (``B x D`` nodes,
  ``-1`` past its end), its length ``a``, the node where the walk stopped (``-1``: the root)
  and that node's draw, committed after the path.
  """
  batch = tree.tokens_BxN.shape[0]
  current_B = jnp.full((batch,), -1, jnp.int32)
  walking_B = jnp.ones((batch,), bool)
  path = []
  for _ in range(depth):
    draw_B = _take(draws_BxN1, current_B[:, None] + 1)[:, 0]
    hit_BxN = (tree.valid_BxN & (tree.parent_BxN == current_B[:, None])
               & (tree.tokens_BxN == draw_B[:, None]))
    walking_B &= hit_BxN.any(1)
    child_B = jnp.argmax(hit_BxN, axis=1).astype(jnp.int32)
    path.append(jnp.where(walking_B, child_B, -1))
    current_B = jnp.where(walking_B, child_B, current_B)
  path_BxD = jnp.stack(path, 1)
  return (path_BxD, (path_BxD >= 0).sum(1).astype(jnp.int32), current_B,
          _take(draws_BxN1, current_B[:, None] + 1)[:, 0])
