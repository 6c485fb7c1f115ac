"""The fused dense kernels of a decoding call (Pallas; interpreted off GPU) against the unfused
layer parts, and the two-stream block that uses them."""
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import forward, models
from asarm_jax.models import attention, fused_dense, two_stream
from tests.helpers import equations, model_config


def random_part(seed, rows, depth, widths, norm, bias, residual):
  """Float32 ``x``, weights and (as asked) a norm, a bias and a residual."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape, scale=1.0: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
  return dict(
      x_MxK=normal(rows, depth) * 3 + 1,  # a mean and a variance for the norm to remove
      kernels=[normal(depth, w, scale=depth ** -0.5) for w in widths],
      norm=fused_dense.Norm(normal(depth) + 1, normal(depth), 1e-6) if norm else None,
      bias_N=normal(widths[0]) if bias else None,
      residual_MxN=normal(rows, widths[0]) if residual else None)


def unfused(x_MxK, kernels, norm, bias_N, residual_MxN, gelu):
  """The part as flax's modules compute it, in float32."""
  if norm is not None:
    x_MxK = nn.LayerNorm(epsilon=norm.epsilon).apply(
        {"params": {"scale": norm.scale_K, "bias": norm.bias_K}}, x_MxK)
  outs = []
  for kernel in kernels:
    out = jnp.dot(x_MxK, kernel, precision=jax.lax.Precision.HIGHEST)
    out = out if bias_N is None else out + bias_N
    out = nn.gelu(out) if gelu else out
    outs.append(out if residual_MxN is None else residual_MxN + out)
  return outs


@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("part", ["qkv", "out", "mlp_in", "deep"])
def test_kernel_matches_the_unfused_part(part, rows):
  """Each part of a layer (the block's three launches, and a deeper matmul with bias and
  residual) equals flax's LayerNorm, matmuls, bias, GELU and residual add in float32, for row
  counts that fill the 16-row tile partly or whole: the rows past the call's are masked, never
  mixed in."""
  depth, widths, norm, bias, gelu, residual = {
      "qkv": (64, (96, 96, 96), True, False, False, False),
      "out": (96, (64,), False, False, False, True),
      "mlp_in": (64, (256,), True, True, True, False),
      "deep": (1024, (64,), False, True, False, True)}[part]
  args = random_part(rows, rows, depth, widths, norm, bias, residual)
  got = jax.jit(lambda a: fused_dense.dense(**a, gelu=gelu))(args)
  expected = unfused(**args, gelu=gelu)
  assert len(got) == len(widths)
  for g, e in zip(got, expected):
    assert g.shape == e.shape and g.dtype == jnp.float32
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * float(jnp.abs(e).max()))


def test_every_tiling_gives_the_same_part():
  """The tiling changes the order of the sums only: 16- and 32-column tiles, chunks of 16 to
  128 rows of the weights."""
  args = random_part(0, 3, 128, (64,), True, True, True)
  assert fused_dense.tiling(768, (768,) * 3) == fused_dense.Tiling(32, 256)
  outs = [fused_dense.dense(**args, gelu=True, tiles=fused_dense.Tiling(n, k))[0]
          for n in (16, 32) for k in (16, 64, 128)]
  for out in outs[1:]:
    np.testing.assert_allclose(out, outs[0], rtol=1e-5, atol=1e-5)


def test_bfloat16_weights_round_once():
  """With bf16 weights the part is the float32 computation with those weights but for two
  roundings to bf16, of the normalised rows before the matmul (as the unfused block rounds
  them) and of the result: within 2^-6 of the largest output (each rounding is 2^-9
  relative; 64 terms a sum)."""
  args = random_part(1, 4, 64, (64,), True, True, True)
  args["kernels"] = [w.astype(jnp.bfloat16) for w in args["kernels"]]
  in_float32 = unfused(**{**args, "kernels": [w.astype(jnp.float32) for w in args["kernels"]]},
                       gelu=True)[0]
  got = fused_dense.dense(**args, gelu=True)[0]
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), in_float32,
                             atol=2 ** -6 * float(jnp.abs(in_float32).max()))


def test_shapes_it_does_not_take_are_refused():
  args = random_part(0, 2, 64, (64, 64), False, False, False)
  with pytest.raises(ValueError, match="single weight"):
    fused_dense.dense(**{**args, "bias_N": jnp.zeros(64)})
  with pytest.raises(ValueError, match="at most 16 rows"):
    fused_dense.dense(jnp.zeros((17, 64)), args["kernels"])
  with pytest.raises(ValueError, match="of at most 1024"):
    fused_dense.dense(jnp.zeros((2, 2048)), [jnp.zeros((2048, 64))])
  with pytest.raises(ValueError, match="does not divide"):
    fused_dense.dense(args["x_MxK"], args["kernels"], tiles=fused_dense.Tiling(48, 16))
  assert not fused_dense.supports(2, 40, (64,)) and fused_dense.supports(2, 48, (64,))


def test_each_part_lowers_to_one_gpu_kernel():
  """Every part is one Triton kernel for the GPU: the query, key and value's launch and the
  MLP's with LayerNorm, bias, GELU and residual."""
  x = jnp.ones((2, 64), jnp.bfloat16)
  w = jnp.ones((64, 64), jnp.bfloat16)
  norm = fused_dense.Norm(jnp.ones(64), jnp.zeros(64), 1e-6)
  parts = [lambda: fused_dense.dense(x, [w, w, w], norm=norm),
           lambda: fused_dense.dense(x, [w], norm=norm, bias_N=jnp.ones(64), gelu=True,
                                     residual_MxN=x)]
  with mock.patch.object(attention, "interpreted", lambda: False):
    for part in parts:
      text = jax.jit(part).trace().lower(lowering_platforms=("cuda",)).as_text()
      assert text.count("xla.gpu.triton") == 1


def decoding_call(model, params, rows, batch=2, length=12):
  """A cached call of ``rows`` query rows after a prefill of the prompt, and its cache."""
  rng = np.random.default_rng(rows)
  tokens = jnp.asarray(rng.integers(4, 40, (batch, length)), jnp.int32)
  perm = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  visible = jnp.full((batch,), 4, jnp.int32)
  cache = model.init_cache(batch, length)
  _, cache = forward.call(model, params, tokens, perm, visible, perm[:, 4:5],
                          jnp.ones((batch, 1), bool), cache=cache, content_rank_BxR=perm[:, :4])
  target = 4 + jnp.broadcast_to(jnp.arange(rows, dtype=jnp.int32), (batch, rows))
  return forward.call(model, params, tokens, perm, visible, target, jnp.ones((batch, rows), bool),
                      jnp.full((batch,), 5, jnp.int32), cache=cache, content_rank_BxR=perm[:, 4:5])


def test_a_decoding_call_takes_the_fused_block_with_the_same_result():
  """A cached call of at most 16 rows (over the batch) runs each block with three fused
  launches around attention, and gives the unfused block's logits and cache (float32); a
  larger call, an uncached one (training) and the batch-invariant network keep XLA's
  kernels."""
  config = model_config(vocab_size=48, num_layers=2, d_model=32, num_heads=2, d_ff=64, max_len=64,
                        attention_impl="xla")
  unfused_model = models.build(config).clone(attention_impl="pallas", fused_decoding=False)
  fused_model = unfused_model.clone(fused_decoding=True)
  params = unfused_model.init(jax.random.key(0), *models.example_inputs(2, 12, 12))
  (logits, cache), (expected, expected_cache) = [
      decoding_call(m, params, 3) for m in (fused_model, unfused_model)]
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.tree_util.tree_leaves(cache), jax.tree_util.tree_leaves(expected_cache)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def launches(model, rows):
    """The call's fused launches, from its jaxpr."""
    jaxpr = jax.make_jaxpr(lambda p: decoding_call(model, p, rows))(params)
    return sum(eqn.params["name"] == "fused_dense"
               for eqn in equations(jaxpr.jaxpr, "pallas_call")
               if eqn.primitive.name == "pallas_call")
  # Three a layer: in the prefill's 2 x (4 + 1) rows, a call's 2 x (1 + 1) and 2 x (1 + 7); a
  # call of 2 x (1 + 8) rows has none.
  assert launches(fused_model, 1) == launches(fused_model, 7) == 2 * 2 * 3
  assert launches(fused_model, 8) == 2 * 3
  assert launches(unfused_model, 1) == 0
  assert launches(models.batch_invariant(fused_model), 1) == 0



def test_a_block_fuses_on_one_device_only():
  """Under a mesh of several devices (sharded weights) the block keeps XLA's kernels."""
  layer = two_stream.Layer(num_heads=2, d_ff=64, rope_base=1e4, alibi=True, dtype=jnp.float32,
                           param_dtype=jnp.float32, out_init_std=0.02, attention_impl="pallas",
                           fused_decoding=True, batch_invariant=False)
  assert layer.fuses(16, 32) and not layer.fuses(17, 32)
  several = mock.Mock(empty=False, size=2)
  with mock.patch.object(jax.sharding, "get_abstract_mesh", lambda: several):
    assert not layer.fuses(16, 32)
