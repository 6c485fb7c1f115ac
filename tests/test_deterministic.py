"""Deterministic decoding (``generate(..., deterministic=True)``): a row's computation does not
depend on the call's shape, so its tokens depend on neither the batch, the slots nor the method.

The network is a small two-stream model in bf16 (where rounding is coarse); off GPUs its
kernels run in Pallas' interpreter, tile by tile, so the tests check the same tiling that the
GPU runs. That the GPU build lowers is checked by lowering it for CUDA here.
"""
from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.experimental import pallas as pl

from asarm_jax import config_base, distribution, forward, models, sampling, validation
from asarm_jax.models import attention, invariant_matmul
from asarm_jax.sampling import cost_model
from asarm_jax.sampling import state as state_lib
from asarm_jax.sampling.methods import auto
from asarm_jax.sampling.methods import tree as tree_method
from tests.helpers import equations, model_config

LENGTH, VOCAB = 64, 48


def _small_model(length: int):
  """The small bf16 two-stream model of these tests, for rows of ``length``."""
  return models.build(model_config(vocab_size=VOCAB, max_len=length, num_layers=2, d_model=32,
                                   num_heads=2, d_ff=64, dtype="bfloat16"))


def _sharp_params(model, seed: int, length: int):
  """Scaled-up weights: sharper, more varied conditionals than a fresh init's near-uniform
  ones."""
  return jax.tree.map(lambda x: 3 * x if x.ndim > 1 else x,
                      model.init(jax.random.key(seed), *models.example_inputs(1, length, 4)))


MODEL = _small_model(LENGTH)
PARAMS = _sharp_params(MODEL, 0, LENGTH)


def _random(shape, seed, dtype=jnp.bfloat16):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


@pytest.mark.parametrize("dtype, depth", [(jnp.bfloat16, 96), (jnp.float32, 96),
                                          (jnp.bfloat16, 512)])  # 512: two splits of K
def test_matmul_rows_are_the_same_bits_whatever_the_number_of_rows(dtype, depth):
  x_MxK, w_KxN = _random((70, depth), 1, dtype), _random((depth, 48), 2, dtype)
  out_MxN = np.asarray(invariant_matmul.matmul(x_MxK, w_KxN, dtype), np.float32)
  for rows in (slice(5, 8), slice(0, 1), slice(60, 70)):
    np.testing.assert_array_equal(
        np.asarray(invariant_matmul.matmul(x_MxK[rows], w_KxN, dtype), np.float32),
        out_MxN[rows])
  np.testing.assert_array_equal(  # the transposed weight: the same products in the same order
      np.asarray(invariant_matmul.matmul(x_MxK, w_KxN.T, dtype, transposed=True), np.float32),
      out_MxN)
  # Rows enough for _IN_TURN_FROM_TILES output tiles (3 column tiles of 16): each program adds
  # the splits' sums itself, the same additions as XLA's over the side-by-side splits.
  num_rows = -(-invariant_matmul._IN_TURN_FROM_TILES // 3) * invariant_matmul.BLOCK_M  # pylint: disable=protected-access
  many_MxK = jnp.concatenate([x_MxK, _random((num_rows - 70, depth), 3, dtype)])
  np.testing.assert_array_equal(
      np.asarray(invariant_matmul.matmul(many_MxK, w_KxN, dtype)[:70], np.float32), out_MxN)
  with mock.patch.object(attention, "interpreted", lambda: False):  # both forms lower for GPUs
    for x in (x_MxK, many_MxK):
      text = jax.jit(lambda x: invariant_matmul.matmul(x, w_KxN, dtype)).trace(x).lower(
          lowering_platforms=("cuda",)).as_text()
      assert text.count("xla.gpu.triton") == 1
  exact = np.asarray(x_MxK, np.float64) @ np.asarray(w_KxN, np.float64)
  # Rounding to the output dtype (half a unit in the last place: 2^-8 relative in bf16, 2^-24
  # in float32) plus float32 summation of K products (at most K u sum|x w|, u = 2^-24).
  rounding = 2.0 ** -8 if dtype == jnp.bfloat16 else 2.0 ** -24
  bound = rounding * np.abs(exact) + depth * 2.0 ** -24 * (
      np.abs(np.asarray(x_MxK, np.float64)) @ np.abs(np.asarray(w_KxN, np.float64)))
  assert (np.abs(out_MxN - exact) <= bound + 1e-30).all()


def test_matmul_tiles_depend_on_the_weight_only():
  """The kernel's tiles, and so every row's order of summation, are the same for 3 rows and
  for 130 (only the grid's number of row tiles changes)."""
  w_KxN = _random((512, 48), 2)
  seen = []

  def record(kernel, **kwargs):
    seen.append((kernel.keywords, [s.block_shape for s in kwargs["in_specs"]],
                 kwargs["out_specs"].block_shape, kwargs["grid"][1:]))
    return real(kernel, **kwargs)

  real = pl.pallas_call
  with mock.patch.object(invariant_matmul.pl, "pallas_call", record):
    for rows in (3, 130):
      invariant_matmul.matmul(_random((rows, 512), 1), w_KxN, jnp.bfloat16)
  assert seen[0] == seen[1] and seen[0][3] == (w_KxN.shape[1] // 16, 2)  # N tiles, K splits


@pytest.mark.parametrize("shape", [(8, 40, 48), (8, 32, 40)])
def test_matmul_rejects_dimensions_off_its_tiles(shape):
  rows, depth, width = shape
  with pytest.raises(ValueError, match="not a multiple of 16"):
    invariant_matmul.matmul(_random((rows, depth), 1), _random((depth, width), 2), jnp.bfloat16)


def _call(model, rows, num_targets, params=PARAMS, batch=3):
  """Logits of ``num_targets`` draft rows after a 5-token prompt, for the rows ``rows`` of a
  batch of random rows."""
  length = model.max_len
  tokens = jax.random.randint(jax.random.key(4), (batch, length), 4, model.vocab_size)[rows]
  perm = jnp.broadcast_to(jnp.arange(length), tokens.shape)
  visible = jnp.full(tokens.shape[:1], 5, jnp.int32)
  targets = jnp.broadcast_to(5 + jnp.arange(num_targets), (tokens.shape[0], num_targets))
  return jax.jit(lambda p: forward.call(model, p, tokens, perm, visible, targets,
                                        jnp.ones_like(targets, bool), visible))(params)


def test_the_batch_invariant_network_is_the_same_function():
  invariant = models.batch_invariant(MODEL)
  np.testing.assert_allclose(_call(invariant, slice(None), 8), _call(MODEL, slice(None), 8),
                             atol=0.1)  # bf16 activations: a few units in the last place
  np.testing.assert_array_equal(_call(invariant, slice(1, 2), 3), _call(invariant, slice(None),
                                                                        8)[1:2, :3])


def test_a_row_of_a_wide_network_is_the_same_bits_alone_and_among_32():
  """At the 110M model's width (768 features, 12 heads), where on the H200 XLA's own
  reductions rounded rows differently at batch 1 and 64: the log-probs (LayerNorms, head and
  normaliser included) of a row alone and among 32, bit for bit."""
  wide = models.batch_invariant(models.build(model_config(
      vocab_size=512, max_len=16, num_layers=1, d_model=768, num_heads=12, d_ff=768,
      dtype="bfloat16")))
  params = wide.init(jax.random.key(0), *models.example_inputs(1, 16, 4))
  log_probs = lambda rows, num_targets: distribution.log_probs(
      _call(wide, rows, num_targets, params, batch=32), 4, 1.0, batch_invariant=True)
  np.testing.assert_array_equal(log_probs(slice(7, 8), 1), log_probs(slice(None), 4)[7:8, :1])


def test_the_batch_invariant_network_lowers_for_the_gpu():
  """Every kernel of a cached decoding call, and of a tree call (row groups over their row's
  keys, then their tails), lowers through Triton (what the GPU compiles)."""
  net = sampling.ModelNetwork(models.batch_invariant(MODEL))
  spec = sampling.SamplerSpec("tree", num_nodes=4, depth=2, ngram=0)
  tokens, visible, order, lengths = (jnp.asarray(x) for x in _rows())
  state = state_lib.init_state(tokens, visible, order, lengths,
                               jax.random.split(jax.random.key(7), 3))
  state = state.replace(cache=net.init_cache(3, LENGTH + spec.num_nodes),
                        carry=tree_method._propose(  # pylint: disable=protected-access
                            spec, state, jnp.zeros((3, spec.depth, VOCAB))))
  plain = lambda p, state: state_lib.call(
      net, p, state, state.tokens_rank_BxL, *state_lib.targets(state.num_decoded_B,
                                                               state.num_target_B, 3),
      state.num_decoded_B, state.num_decoded_B, 1)
  tree = lambda p, state: tree_method.call(net, p, spec, state)
  # Per layer: 2 LayerNorms, q, k, v, out, mlp_in, mlp_out and the attention (a tree call's in
  # two: below the tails' base, then the tails); then ln_final, the tied head and (the plain
  # call's log-probs) the log-softmax's normaliser.
  for call, kernels in ((plain, 2 * 9 + 3), (tree, 2 * 10 + 2)):
    with mock.patch.object(attention, "interpreted", lambda: False):
      text = jax.jit(call).trace(PARAMS, state).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("xla.gpu.triton") == kernels


def _rows():
  """3 rows: left to right with a scattered prompt, a custom order, and 8 tokens of padding."""
  rng = np.random.default_rng(5)
  tokens = rng.integers(4, VOCAB, (3, LENGTH)).astype(np.int32)
  visible = rng.random((3, LENGTH)) < 0.25
  order = np.zeros((3, LENGTH), np.float32)
  order[1] = rng.permutation(LENGTH)
  return tokens, visible, order, np.array([LENGTH, LENGTH, LENGTH - 8], np.int32)


METHODS = {
    "sequential": dict(method="sequential"),
    "assd": dict(method="assd", k=3),
    "assd_fused": dict(method="assd_fused", k=3),
    "auto": dict(method="auto", k=3),
    "tree": dict(method="tree", k=4, depth=2, ngram=1),
}


def _decode(keywords: dict, temperature: float, slots: int | None):
  """Deterministic decoding of :func:`_rows`: through ``generate(..., deterministic=True)``
  with all rows at once, through a model of ``models.batch_invariant`` (as evaluation decodes,
  without the keyword) with ``slots``."""
  tokens, visible, order, lengths = _rows()
  model, keyword = (MODEL, True) if slots is None else (models.batch_invariant(MODEL), False)
  return jax.tree.map(np.asarray, sampling.generate(
      model, PARAMS, tokens, visible, jax.random.key(6), order_BxL=order, length_B=lengths,
      temperature=temperature, slots=slots, deterministic=keyword, **keywords))


def _cost_by_slots(net, sizes, num_slots):
  """A measured cost table (:func:`cost_model.round_ms`) whose best draft size at the prior
  acceptance is the largest through one slot and 0 (sequential steps) through more."""
  del net
  sizes_S = np.asarray(sizes, np.float32)
  return 1 + 0.01 * sizes_S if num_slots == 1 else 1 + sizes_S ** 2


@pytest.mark.parametrize("method", METHODS)
def test_a_row_is_the_same_whatever_the_batch_and_the_method(method, monkeypatch):
  """All rows at once and each alone (one slot: every call of a row at batch 1; the model of
  ``models.batch_invariant`` without the keyword) give the same tokens and calls at T = 1 and
  0; at T = 0 every method gives sequential's tokens. ``auto`` also where this machine's cost
  table would choose other draft sizes at another number of slots (a timing, not a function
  of the row)."""
  monkeypatch.setattr(cost_model, "round_ms", _cost_by_slots)
  sizes = auto.sizes(sampling.SamplerSpec("auto", k=3))
  prior_1xD = np.full((1, max(sizes)), auto.PRIOR_ACCEPTANCE, np.float32)
  assert len({int(auto.choose(sizes, prior_1xD, np.array([9]), _cost_by_slots(None, sizes, s))[0])
              for s in (1, 3)}) == 2
  for temperature in (1.0, 0.0):
    together = _decode(METHODS[method], temperature, None)
    alone = _decode(METHODS[method], temperature, 1)
    for name in ("tokens_BxL", "num_calls_B", "num_generated_B", "rounds_by_size_BxS"):
      np.testing.assert_array_equal(getattr(alone, name), getattr(together, name), name)
  np.testing.assert_array_equal(together.tokens_BxL,
                                _decode(METHODS["sequential"], 0.0, None).tokens_BxL)


# Primitives whose float result depends on an order of summation that XLA picks per shape.
_ORDERED_SUMS = ("reduce_sum", "dot_general", "cumsum", "cumlogsumexp", "reduce_prod", "cumprod")


def _float_sums(jaxpr) -> list[str]:
  """The float sums of ``jaxpr`` and its sub-jaxprs outside Pallas kernels."""
  return [f"{eqn.primitive.name}{[tuple(var.aval.shape) for var in eqn.invars]}"
          for eqn in equations(jaxpr, skip="pallas_call")
          if eqn.primitive.name in _ORDERED_SUMS
          and any(jnp.issubdtype(var.aval.dtype, jnp.floating) for var in eqn.invars)]


@pytest.mark.filterwarnings("ignore:deterministic decoding traced inside another jax.jit")
@pytest.mark.parametrize("method", METHODS)
def test_every_float_sum_of_a_decoding_is_a_fixed_order_kernel(method):
  """XLA chooses a reduction's order per shape, so in deterministic decoding every float sum
  (matmuls, LayerNorm's statistics, the log-softmax's normaliser) is a fixed-order kernel: on
  the H200, with LayerNorm and the normaliser left to XLA, the 110M model's rows decoded
  differently through 64 slots and through one."""
  tokens, visible, order, lengths = _rows()
  jaxpr = jax.make_jaxpr(lambda params: sampling.generate(
      MODEL, params, tokens, visible, jax.random.key(6), order_BxL=order, length_B=lengths,
      temperature=1.0, deterministic=True, **METHODS[method]))(PARAMS)
  assert _float_sums(jaxpr.jaxpr) == []


def _rows_at_block_edges():
  """3 rows of 192 tokens (62, 126 and 69 visible; the tree's first call commits one more) whose
  committed ranks (63, 127 and 70) put the tails' base at 0, 64 and 64, so that a chain of 4
  nodes crosses a key block's edge (ranks 63 | 64-66 and 127 | 128-130) or stays inside one."""
  rng = np.random.default_rng(8)
  tokens = rng.integers(4, VOCAB, (3, LONG)).astype(np.int32)
  visible = np.zeros((3, LONG), bool)
  for row, count in enumerate((62, 126, 69)):
    visible[row, rng.choice(LONG, count, replace=False)] = True
  return tokens, visible, np.zeros((3, LONG), np.float32), np.full(3, LONG, np.int32)


LONG = 192
LONG_MODEL = _small_model(LONG)
TREE_CASES = {  # the model and its weights, the rows, the tree's spec, a chain of nodes or not
    "scattered": lambda: (MODEL, PARAMS, _rows(),
                          sampling.SamplerSpec("tree", num_nodes=4, depth=2, ngram=0), False),
    "at_block_edges": lambda: (
        LONG_MODEL, _sharp_params(LONG_MODEL, 1, LONG), _rows_at_block_edges(),
        sampling.SamplerSpec("tree", num_nodes=4, depth=4, ngram=0), True),
}


@pytest.mark.parametrize("case", TREE_CASES)
def test_a_tree_calls_rows_are_sequential_decodings_bit_for_bit(case):
  """Every row of a batch-invariant tree call (3 rows, 4 nodes) is, bit for bit, what
  sequential decoding computes at batch 1 after committing the node's path one token a call:
  the node's content rows and its query rows meet their keys in rank order, as there. Also
  where the tails' base is past the first key block and paths cross a block's edge."""
  model, params, rows, spec, chain = TREE_CASES[case]()
  net = sampling.ModelNetwork(models.batch_invariant(model))
  params = net.prepare(params)
  tokens, visible, order, lengths = (jnp.asarray(x) for x in rows)
  state = state_lib.init_state(tokens, visible, order, lengths,
                               jax.random.split(jax.random.key(7), 3))
  state = jax.jit(tree_method.init, static_argnums=(0, 2, 4))(net, params, spec, state, True)
  if chain:  # the drafted nodes as one path: node u at depth u
    nodes = jnp.broadcast_to(jnp.arange(spec.num_nodes, dtype=jnp.int32), (3, spec.num_nodes))
    state = state.replace(carry=state.carry._replace(parent_BxN=nodes - 1, depth_BxN=nodes))
  logits_BxN1xD1xV = np.asarray(
      jax.jit(tree_method.call, static_argnums=(0, 2))(net, params, spec, state)[0])
  nodes = jax.tree.map(np.asarray, state.carry)
  n_B, target_B = np.asarray(state.num_decoded_B), np.asarray(state.num_target_B)
  if chain:
    np.testing.assert_array_equal(n_B, [63, 127, 70])
  sequential_call = jax.jit(lambda tokens, b, rank, cache: forward.call(
      net.model, params, tokens, state.perm_BxL[b:b + 1], state.num_visible_B[b:b + 1],
      rank + jnp.arange(spec.depth + 1)[None], jnp.ones((1, spec.depth + 1), bool), rank[:, 0],
      cache=cache,
      content_rank_BxR=rank - 1), static_argnums=1)
  checked = 0
  for b in range(3):
    for node in range(-1, spec.num_nodes):
      if node >= 0 and not nodes.valid_BxN[b, node]:
        continue
      path, at = [], node
      while at >= 0:  # the node's tokens, root first
        path.insert(0, nodes.tokens_BxN[b, at])
        at = nodes.parent_BxN[b, at]
      tokens_rank = np.array(state.tokens_rank_BxL[b:b + 1])
      tokens_rank[0, n_B[b]:n_B[b] + len(path)] = path
      cache = jax.tree.map(lambda x: x[b:b + 1], state.cache)
      for rank in range(n_B[b], n_B[b] + len(path) + 1):  # content row rank - 1, query rank
        logits_1xD1xV, cache = sequential_call(jnp.asarray(tokens_rank), b,
                                               jnp.asarray([[rank]]), cache)
      use = rank + np.arange(spec.depth + 1) < target_B[b]
      np.testing.assert_array_equal(logits_BxN1xD1xV[b, node + 1][use],
                                    np.asarray(logits_1xD1xV)[0][use])
      checked += use.sum()
  assert checked > 3 * spec.num_nodes


def _config(**model) -> ml_collections.ConfigDict:
  config = config_base.base_config()
  config.sample.deterministic = True
  config.model.update(model)
  return config


@pytest.mark.parametrize("config, message", [
    (_config(arch="xlnet"), "needs model.arch='two_stream'"),
    (_config(d_ff=1000), r"model.d_ff=1000: sample.deterministic=True needs a multiple of 16"),
])
def test_deterministic_needs_a_two_stream_model_with_tile_sized_weights(config, message):
  with pytest.raises(ValueError, match=message):
    validation.validate_config(config, "eval")


def test_deterministic_decoding_refuses_what_it_cannot_do():
  xlnet = models.build(model_config(arch="xlnet", vocab_size=VOCAB, max_len=LENGTH,
                                    num_layers=1, d_model=32, num_heads=2, d_ff=64))
  tokens, visible = np.zeros((1, LENGTH), np.int32), np.ones((1, LENGTH), bool)
  with pytest.raises(ValueError, match="needs model.arch='two_stream'"):
    sampling.generate(xlnet, None, tokens, visible, jax.random.key(0), deterministic=True)
  with pytest.raises(ValueError, match="deterministic tree decoding needs cache=True"):
    sampling.generate(MODEL, PARAMS, tokens, visible, jax.random.key(0), method="tree",
                      cache=False, deterministic=True)
  with pytest.raises(ValueError, match="a batch-invariant tree call has depth <= 62; got 63"):
    sampling.generate(MODEL, PARAMS, tokens, visible, jax.random.key(0), method="tree",
                      depth=63, deterministic=True)


def test_deterministic_decoding_inside_another_jit_says_which_options_it_needs():
  """Traced inside a user's ``jax.jit``, ``generate`` cannot pass its XLA options (excess
  precision off: ``sampling.core.DETERMINISTIC_OPTIONS``), so it warns; the same tokens as
  its own program here (the CPU keeps every rounding)."""
  tokens, visible, order, lengths = _rows()
  decode = lambda p: sampling.generate(MODEL, p, tokens, visible, jax.random.key(6),
                                       order_BxL=order, length_B=lengths, method="sequential",
                                       temperature=0.0, deterministic=True).tokens_BxL
  with pytest.warns(UserWarning, match="DETERMINISTIC_OPTIONS"):
    nested = jax.jit(decode)(PARAMS)
  np.testing.assert_array_equal(nested, decode(PARAMS))
