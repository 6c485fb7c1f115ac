"""Tests of asarm_jax.sampling.candidate_tree: tree shape from proposals, prompt lookup, the walk."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax.sampling import candidate_tree as tree_lib


def _paths(tree: tree_lib.Tree, b: int) -> list[tuple[int, ...]]:
  """Every valid node's path (root first) in row ``b``; checks the structural invariants."""
  t = jax.tree.map(np.asarray, tree)
  paths, paths_by_node = [], {}
  for u in range(t.tokens_BxN.shape[1]):
    if not t.valid_BxN[b, u]:
      continue
    parent = t.parent_BxN[b, u]
    assert parent < u  # parents come first
    if parent >= 0:
      assert t.valid_BxN[b, parent] and t.depth_BxN[b, u] == t.depth_BxN[b, parent] + 1
      paths.append(paths_by_node[parent] + (int(t.tokens_BxN[b, u]),))
    else:
      assert t.depth_BxN[b, u] == 0
      paths.append((int(t.tokens_BxN[b, u]),))
    paths_by_node[u] = paths[-1]
  assert len(set(paths)) == len(paths)  # siblings carry distinct tokens
  return paths


@pytest.mark.parametrize("num_nodes", [1, 4, 9])
def test_product_tree_is_the_top_sequences(num_nodes):
  """The nodes are the N sequences (lengths 1..D) of largest prod_l q_l, found by brute force."""
  rng = np.random.default_rng(num_nodes)
  batch, depth, vocab = 3, 3, 5
  logq = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(batch, depth, vocab)) * 2), -1)
  tree = tree_lib.product_tree(logq, num_nodes)
  for b in range(batch):
    got = _paths(tree, b)
    score = lambda seq: sum(float(logq[b, level, tok]) for level, tok in enumerate(seq))
    every = [seq for length in range(1, depth + 1)
             for seq in itertools.product(range(vocab), repeat=length)]
    want = sorted(every, key=lambda seq: (-score(seq), len(seq)))[:num_nodes]
    assert sorted(got) == sorted(want)


def test_product_tree_with_more_nodes_than_tokens_pads_invalid():
  logq = jnp.log(jnp.asarray([[[0.0, 0.5, 0.5]]]))  # token 0 impossible (a special id)
  tree = tree_lib.product_tree(logq, 5)
  assert sorted(_paths(tree, 0)) == [(1,), (2,)]


def test_ancestors_and_walk():
  # root -> 0 (tok 7) -> 2 (tok 9) -> 3 (tok 4); root -> 1 (tok 8).
  tree = tree_lib.Tree(tokens_BxN=jnp.asarray([[7, 8, 9, 4]] * 3),
                       parent_BxN=jnp.asarray([[-1, -1, 0, 2]] * 3),
                       depth_BxN=jnp.asarray([[0, 0, 1, 2]] * 3),
                       valid_BxN=jnp.asarray([[True, True, True, True]] * 2
                                             + [[True, True, False, False]]))
  anc = np.asarray(tree_lib.ancestors(tree, 3))[0]
  np.testing.assert_array_equal(anc, [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]])
  # draws: [root, node 0, node 1, node 2, node 3]
  draws = jnp.asarray([[7, 9, 5, 4, 6],    # 7 -> 9 -> 4 -> leaf draws 6: path 0, 2, 3
                       [8, 9, 5, 4, 6],    # 8 -> node 1 draws 5 (not a child): path 1
                       [7, 9, 5, 4, 6]])   # node 2 invalid: path 0, then 9 is off the tree
  path, length, stop, last = tree_lib.walk(tree, draws, 3)
  np.testing.assert_array_equal(path, [[0, 2, 3], [1, -1, -1], [0, -1, -1]])
  np.testing.assert_array_equal(length, [3, 1, 1])
  np.testing.assert_array_equal(stop, [3, 1, 0])
  np.testing.assert_array_equal(last, [6, 5, 9])


def test_ngram_chain_follows_the_latest_match_with_position_offsets():
  # Positions 0..9 ("a b c x a b c y a b") and 12 are known: the prompt is ranks 0..9 and 10
  # (position 12); then rank 11 -> position 10, rank 12 -> 11, rank 13 -> 13 (L = 14).
  a, b, c, x, y, z = 10, 11, 12, 13, 14, 15
  tokens = np.asarray([[a, b, c, x, a, b, c, y, a, b, 0, 0, z, 0]])
  known = np.zeros_like(tokens, bool)
  known[0, :10] = known[0, 12] = True
  perm = np.asarray([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 10, 11, 13]])  # the visible one first
  chain, valid = tree_lib.ngram_chain(jnp.asarray(tokens), jnp.asarray(known), jnp.asarray(perm),
                                      jnp.asarray([11]), jnp.asarray([14]), 4, 2)
  # "a b" last matched at positions 4-5, so position 10 <- 6 (c), 11 <- 7 (y), 13 <- 9 (b).
  np.testing.assert_array_equal(np.asarray(chain)[0, :3], [c, y, b])
  np.testing.assert_array_equal(valid, [[True, True, True, False]])  # rank 14 does not exist
  _, none = tree_lib.ngram_chain(jnp.asarray(tokens), jnp.asarray(known), jnp.asarray(perm),
                                 jnp.asarray([11]), jnp.asarray([14]), 4, 3)
  assert not np.asarray(none).any()  # "y a b" never occurred before


def test_add_chain_continues_from_the_deepest_covered_level():
  tree = tree_lib.Tree(tokens_BxN=jnp.asarray([[5, 6, 7]] * 2),
                       parent_BxN=jnp.asarray([[-1, -1, 0]] * 2), depth_BxN=jnp.asarray([[0, 0, 1]] * 2), valid_BxN=jnp.ones((2, 3), bool))
  chain = jnp.asarray([[5, 7, 8, 9], [6, 5, 4, 3]])
  merged = tree_lib.add_chain(tree, chain, jnp.asarray([[True, True, True, False],
                                                        [True, True, True, True]]), 3)
  for b, want in enumerate([{(5,), (6,), (5, 7), (5, 7, 8)},
                            {(5,), (6,), (5, 7), (6, 5), (6, 5, 4), (6, 5, 4, 3)}]):
    assert set(_paths(merged, b)) == want


def test_build_drops_nodes_past_the_last_rank():
  logq = jax.nn.log_softmax(jnp.zeros((1, 3, 6)), -1)
  tree = tree_lib.build(logq, None, 8, jnp.asarray([4]), jnp.asarray([6]))
  t = jax.tree.map(np.asarray, tree)
  assert t.valid_BxN.any() and (t.depth_BxN[t.valid_BxN] < 2).all()
