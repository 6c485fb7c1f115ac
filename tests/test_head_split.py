"""The split network call: ``head=False`` features, then the head, equal the plain call."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import forward, models, ordering
from tests.helpers import model_config

VOCAB, LENGTH = 40, 8

_call = jax.jit(forward.call, static_argnums=0, static_argnames="head")
_head = jax.jit(forward.head, static_argnums=0)


def _model(arch: str, tie_embeddings: bool):
  return models.build(model_config(arch=arch, vocab_size=VOCAB, num_layers=2, d_model=32,
                                   num_heads=4, d_ff=64, max_len=16,
                                   tie_embeddings=tie_embeddings))


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("arch,tie_embeddings",
                         [("two_stream", True), ("two_stream", False), ("xlnet", True)])
def test_features_then_head_equal_the_call(arch, tie_embeddings, cache):
  """On every query row, and on a gathered subset of rows (as the tree and fused samplers
  use it); the cache the call writes is the same either way."""
  model = _model(arch, tie_embeddings)
  params = model.init(jax.random.key(0), *models.example_inputs(2, LENGTH, 3))
  if arch == "xlnet":  # its head bias starts at zero
    params["params"]["head_bias"] = jax.random.normal(jax.random.key(1), (VOCAB,))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(4, VOCAB, (3, LENGTH)), jnp.int32)
  visible = jnp.asarray(rng.random((3, LENGTH)) < 0.4)
  sigma = ordering.make_ordering(visible, rng.random((3, LENGTH)))
  tokens_rank = ordering.to_rank_space(tokens, sigma.perm_BxL)
  target = jnp.broadcast_to(jnp.arange(LENGTH, dtype=jnp.int32), (3, LENGTH))
  kwargs = {}
  if cache:
    kwargs = dict(cache=model.init_cache(3, LENGTH), content_rank_BxR=target)
  args = (params, tokens_rank, sigma.perm_BxL, sigma.num_visible_B, target,
          jnp.ones((3, LENGTH), bool), jnp.full((3,), 5, jnp.int32))
  out, features = _call(model, *args, **kwargs), _call(model, *args, **kwargs, head=False)
  if cache:
    (out, out_cache), (features, features_cache) = out, features
    jax.tree.map(np.testing.assert_array_equal, out_cache, features_cache)
  assert features.shape == (3, LENGTH, 32)
  np.testing.assert_allclose(_head(model, params, features), out, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(model.apply(params, features, method=type(model).logits), out,
                             rtol=1e-6, atol=1e-6)
  gather = lambda x: jnp.take_along_axis(x, jnp.asarray([[1, 4], [0, 7], [6, 6]])[..., None], 1)
  np.testing.assert_allclose(_head(model, params, gather(features)), gather(out), rtol=1e-6,
                             atol=1e-6)
