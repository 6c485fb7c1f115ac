"""The model's LayerNorm: ``nn.LayerNorm``'s parameters and forward bits, its written-out
backward equal to autodiff's."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax.models import layer_norm


def _inputs(dtype):
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  # Rows of large mean and small spread (the fast variance's worst case), and a constant row.
  x = 3.0 + 0.1 * jax.random.normal(keys[0], (2, 5, 48))
  x = x.at[1, 2].set(0.5).astype(dtype)
  cotangent = jax.random.normal(keys[1], x.shape)
  params = {"params": {"scale": 1 + 0.3 * jax.random.normal(keys[2], (48,)),
                       "bias": 0.3 * jax.random.normal(keys[3], (48,))}}
  return x, cotangent, params


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_bits_and_parameters_are_nn_layer_norms(dtype):
  x, _, params = _inputs(dtype)
  ours, flax_own = layer_norm.LayerNorm(dtype, jnp.float32), nn.LayerNorm(dtype=dtype)
  assert (jax.tree_util.tree_map(jnp.shape, ours.init(jax.random.PRNGKey(1), x))
          == jax.tree_util.tree_map(jnp.shape, flax_own.init(jax.random.PRNGKey(1), x)))
  got, expected = jax.jit(ours.apply)(params, x), jax.jit(flax_own.apply)(params, x)
  assert got.dtype == expected.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 2e-5), (jnp.bfloat16, 1e-2)])
def test_gradients_are_autodiffs(dtype, tolerance):
  """Of the input, the scale and the bias: float32 to rounding; bf16 within one bf16 step of the
  input's gradient (at most 2^-7 relative: both round float32 derivatives that differ by
  rounding)."""
  x, cotangent, params = _inputs(dtype)

  def grads(module):
    loss = lambda p, x: jnp.sum(module.apply(p, x).astype(jnp.float32) * cotangent)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

  got = grads(layer_norm.LayerNorm(dtype, jnp.float32))
  expected = grads(nn.LayerNorm(dtype=dtype))
  for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
    assert g.dtype == e.dtype
    g, e = np.asarray(g, np.float32), np.asarray(e, np.float32)
    np.testing.assert_allclose(g, e, rtol=tolerance, atol=tolerance * np.abs(e).max())
