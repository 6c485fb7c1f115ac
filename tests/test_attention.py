"""The fused attention kernel (Pallas; interpreted off GPU) against the dense reference."""
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import forward, masks, models, ordering
from asarm_jax.models import attention
from tests.helpers import equations, model_config


def random_call(seed, rows, keys, tree, heads=3, dim=16, batch=2):
  """Random q/k/v/sink, limits, key ranks in random order, positions and tree bitsets."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  limits = rng.integers(0, keys + 1, (batch, rows))
  limits[:, 0] = 0  # a row that sees no key: only the sink
  visibility = masks.Visibility(
      jnp.asarray(limits, jnp.int32),
      jnp.asarray(np.stack([rng.permutation(keys) for _ in range(batch)]), jnp.int32))
  if tree:
    num_nodes = 40  # both bitset words in use
    ancestors = jnp.asarray(rng.random((batch, num_nodes, num_nodes)) < 0.3)
    row_node = jnp.asarray(rng.integers(-1, num_nodes, (batch, rows)), jnp.int32)
    key_node = np.where(rng.random((batch, keys)) < 0.3,
                        rng.integers(0, num_nodes, (batch, keys)), -1)
    visibility = visibility._replace(row_nodes_BxTx2=masks.node_bits(row_node, ancestors),
                                     key_node_BxS=jnp.asarray(key_node, jnp.int32))
  positions = jnp.asarray(rng.integers(0, 600, (batch, rows + keys)), jnp.int32)
  return ((normal(batch, rows, heads, dim), normal(batch, keys, heads, dim),
           normal(batch, keys, heads, dim), normal(heads, dim), normal(heads, dim)),
          (visibility, positions[:, :rows], positions[:, rows:]), normal(batch, rows, heads, dim))


@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("rows,keys", [(70, 75), (5, 130)])
def test_kernel_matches_reference_values_and_gradients(rows, keys, alibi, tree):
  """Outputs and the gradients of q, k, v and the sink equal the dense reference (float32):
  visibility by rank limit and tree bitset, ALiBi from positions, the sink, partial blocks of
  rows and keys, and a row that sees only the sink."""
  differentiable, fixed, weights = random_call(rows + keys + alibi + 2 * tree, rows, keys, tree)

  def loss(implementation):
    return lambda *xs: (attention.attend(*xs, *fixed, alibi, implementation) * weights).sum()

  grad = lambda impl: jax.jit(jax.value_and_grad(loss(impl), argnums=range(5)))(*differentiable)
  for expected, got in zip(jax.tree_util.tree_leaves(grad("xla")),
                           jax.tree_util.tree_leaves(grad("pallas"))):
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5 * float(jnp.abs(expected).max()))


def test_kernel_skips_no_visible_key():
  """Block skipping is only an optimisation: keys whose ranks every limit reaches lie in the
  last block; rows of the first block see only them (key ranks descending with the slot)."""
  differentiable, (visibility, qpos, kpos), _ = random_call(0, 70, 130, False)
  keys = visibility.key_rank_BxS.shape[1]
  visibility = visibility._replace(
      key_rank_BxS=jnp.broadcast_to(jnp.arange(keys)[::-1], visibility.key_rank_BxS.shape),
      row_limit_BxT=jnp.full(visibility.row_limit_BxT.shape, 3, jnp.int32))
  out = lambda impl: jax.jit(lambda *xs: attention.attend(*xs, visibility, qpos, kpos, True,
                                                         impl))(*differentiable)
  np.testing.assert_allclose(out("pallas"), out("xla"), rtol=2e-5, atol=2e-5)


def test_kernels_loop_over_the_run_of_seen_blocks_without_a_branch():
  """Each kernel loops over two runs of blocks some row sees (:func:`attention._runs`: the
  first unbroken run, then from the next seen block to the last), with no branch in its loops
  (Triton then fetches a block ahead: cp.async in the compiled kernel); the values and
  gradients are the reference's: here rows see keys of the first and last of three blocks,
  never the middle one."""
  t, f = jnp.bool_(True), jnp.bool_(False)
  runs = [attention._runs(needed) for needed in (
      [f, f, f], [f, t, f, t, f], [t, f], [f, t], [t, t, f, t, f, t])]
  assert [[(int(a), int(b)) for a, b in run] for run in runs] == [
      [(3, 3), (3, 3)], [(1, 2), (3, 4)], [(0, 1), (2, 2)], [(1, 2), (2, 2)],
      [(0, 2), (3, 6)]]
  differentiable, (visibility, qpos, kpos), weights = random_call(1, 70, 192, False)
  block = attention.BLOCK_K
  ranks = np.concatenate([np.arange(block), np.arange(2 * block, 3 * block),
                          np.arange(block, 2 * block)])  # the middle block: ranks past every limit
  visibility = visibility._replace(
      key_rank_BxS=jnp.broadcast_to(jnp.asarray(ranks, jnp.int32), visibility.key_rank_BxS.shape),
      row_limit_BxT=jnp.minimum(visibility.row_limit_BxT, 2 * block))
  loss = lambda impl: lambda *xs: (attention.attend(*xs, visibility, qpos, kpos, True, impl)
                                   * weights).sum()
  grad = lambda impl: jax.value_and_grad(loss(impl), argnums=range(5))
  for expected, got in zip(jax.tree_util.tree_leaves(jax.jit(grad("xla"))(*differentiable)),
                           jax.tree_util.tree_leaves(jax.jit(grad("pallas"))(*differentiable))):
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5 * float(jnp.abs(expected).max()))
  kernels = [eqn.params["jaxpr"] for eqn in equations(
      jax.make_jaxpr(grad("pallas"))(*differentiable).jaxpr, "pallas_call")
              if eqn.primitive.name == "pallas_call"]
  assert len(kernels) == 3  # forward, dq, dk/dv
  assert all("cond[" not in str(kernel) and "while[" in str(kernel) for kernel in kernels)


def test_model_logits_and_cache_agree_across_implementations():
  """The two-stream model with the kernel gives the reference's logits, cached and not."""
  reference = models.build(model_config(vocab_size=40, num_layers=2, d_model=32, num_heads=2,
                                        d_ff=64, max_len=64, attention_impl="xla"))
  fused = reference.clone(attention_impl="pallas")
  length = 12
  params = reference.init(jax.random.key(0), *models.example_inputs(2, length, length))
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(4, 40, (2, length)), jnp.int32)
  visible = jnp.asarray(rng.random((2, length)) < 0.3)
  sigma = ordering.make_ordering(visible)
  tokens_rank = ordering.to_rank_space(tokens, sigma.perm_BxL)
  target = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (2, length))
  valid = target >= sigma.num_visible_B[:, None]
  call = lambda model, **kw: forward.call(model, params, tokens_rank, sigma.perm_BxL,
                                          sigma.num_visible_B, target, valid, **kw)
  expected = call(reference)
  np.testing.assert_allclose(call(fused), expected, rtol=1e-4, atol=1e-4)
  # Cached: the whole sequence written into a cache of more slots than ranks.
  for model in (reference, fused):
    logits, _ = call(model, cache=model.init_cache(2, length + 4), content_rank_BxR=target)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_a_small_call_splits_its_keys_among_programs():
  """A call of few rows gets query tiles of as few rows as hold them (up to 128: a tree
  call's), and a grid of few query tiles (a decoding call at batch 1: one per head) runs
  several programs per tile over runs of the key blocks and combines their states, up to a
  full grid; the batch-invariant kernel does neither. Both give the same attention (the
  reference's: the test above runs its 5-row calls in 16-row tiles, split, and its 70-row
  calls, values and gradients, in 128-row tiles) and both lower for the GPU."""
  assert [attention._query_block(rows, True) for rows in (2, 16, 17, 40, 70, 128, 129)] == [
      16, 16, 32, 64, 128, 128, 64]
  assert attention._query_block(2, False) == 64
  assert attention._key_splits(12, 8) == 8  # batch 1, 12 heads, 512 keys: 96 programs
  assert attention._key_splits(40, 8) == 2 and attention._key_splits(64 * 12, 8) == 1
  differentiable, fixed, _ = random_call(3, 5, 130, True)
  attend = lambda invariant: jax.jit(lambda *xs: attention.attend(
      *xs, *fixed, True, "pallas", batch_invariant=invariant))
  np.testing.assert_allclose(attend(False)(*differentiable), attend(True)(*differentiable),
                             rtol=1e-5, atol=1e-6)
  with mock.patch.object(attention, "interpreted", lambda: False):
    for invariant in (False, True):
      text = attend(invariant).trace(*differentiable).lower(
          lowering_platforms=("cuda",)).as_text()
      assert text.count("xla.gpu.triton") == 1
    # A 70-row call's 128-row tiles (8 warps): forward, and the dq and dk/dv kernels.
    differentiable, fixed, _ = random_call(4, 70, 130, True)
    loss = lambda *xs: attention.attend(*xs, *fixed, True, "pallas").sum()
    text = jax.jit(jax.grad(loss, argnums=range(5))).trace(*differentiable).lower(
        lowering_platforms=("cuda",)).as_text()
    assert text.count("xla.gpu.triton") == 3


def test_unknown_implementation_is_refused():
  differentiable, fixed, _ = random_call(0, 3, 4, False)
  with pytest.raises(ValueError, match="attention implementation"):
    attention.attend(*differentiable, *fixed, True, "flash")


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from asarm_jax.models import attention
from tests.test_attention import random_call
differentiable, fixed, weights = random_call(3, 70, 75, True, heads=4, batch=4)
loss = lambda impl: lambda *xs: (attention.attend(*xs, *fixed, True, impl) * weights).sum()
grad = lambda impl: jax.jit(jax.value_and_grad(loss(impl), argnums=range(5)))
expected = grad("xla")(*differentiable)
mesh = Mesh(np.asarray(jax.devices()).reshape(2, 1, 2), ("data", "fsdp", "tensor"))
with jax.set_mesh(mesh):
  split = lambda x: jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")
                                                    if x.ndim == 4 else P("tensor")))
  sharded = [split(x) for x in differentiable]
  text = grad("pallas").lower(*sharded).as_text()
  assert "manual_computation" in text or "{manual}" in text  # the kernel runs per shard
  got = grad("pallas")(*sharded)
for e, g in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got)):
  np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5 * float(jnp.abs(e).max()))
print("OK")
"""


def test_kernel_under_a_mesh_runs_per_shard():
  """Under ``jax.set_mesh`` (as the trainer runs) the kernel runs through ``shard_map``: rows
  split over the data axes, heads over ``tensor`` (so each device's ALiBi slopes and sink are
  its own heads'), and the sink's gradient summed over the shards. Values and gradients equal
  the dense reference on 4 fake CPU devices."""
  from tests.test_sharding import run_script  # pylint: disable=g-import-not-at-top
  run_script(SHARDED, devices=4)
