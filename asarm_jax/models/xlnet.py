"""Hugging Face ``XLNetLMHeadModel``'s network, in flax.linen, behind our two-stream interface.

Same call, return values and KV cache as :class:`asarm_jax.models.two_stream.TwoStreamTransformer`,
so masks, :func:`asarm_jax.forward.call`, density, the objective and every sampler use it
unchanged (``config.model.arch="xlnet"``). What differs is the network, which is XLNet's
(Yang et al. 2019) as HF implements it, so HF weights load exactly (:mod:`asarm_jax.convert`):

* content rows start from the word embedding, query rows from the learned ``mask_emb``; there is
  no absolute position embedding, no attention sink, no final LayerNorm;
* attention score ``((q + r_w_bias) . k + (q + r_r_bias) . R(p_q - p_k)) / sqrt(H)`` where
  ``R(d) = [sin(d w), cos(d w)] W_r`` is HF's sinusoidal relative encoding (``attn_type="bi"``)
  at the *true* query and key positions (HF's ``perm_mask``/``target_mapping`` become our masks);
* post-LN after attention and after the GELU feed-forward; tied LM head with a bias.

HF adds a segment term only when ``token_type_ids`` is given. With one segment (all ids equal)
it adds ``(q + r_s_bias) . seg_embed[0]`` to every key of a row, which the softmax ignores, so
the term is omitted (and ``r_s_bias`` / ``seg_embed`` are not loaded).

The relative term is dense: each query scores every distance in ``(-max_len, max_len)`` and
gathers the one of each key (``B x N x T x (2 max_len - 1)``). It depends only on the two true
positions, so cached keys stay valid, as the rank-indexed cache requires.

A row that may see no key (a causal LM's first target without prompt; padding rows) gets a zero
attention vector. HF would average over *every* key there, future tokens included.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asarm_jax import masks
from asarm_jax.models.two_stream import Cache, LayerCache, write_layer_cache

Array = jnp.ndarray

# Logical axes of every parameter, as in two_stream.PARAM_AXES (entries the two tables share
# are spelt identically: asarm_jax.sharding takes the union).
PARAM_AXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"embed/embedding", ("vocab", "embed")),
    (r"mask_embedding", ("embed",)),
    (r"head_bias", ("vocab",)),
    (r"attention/(query|key|value)/kernel", ("embed", "heads", "kv")),
    (r"attention/position/kernel", ("embed", "heads", "kv")),
    (r"attention/out/kernel", ("heads", "kv", "embed")),
    (r"attention/(content|position)_bias", ("heads", "kv")),
    (r"mlp_in/kernel", ("embed", "mlp")),
    (r"mlp_in/bias", ("mlp",)),
    (r"mlp_out/kernel", ("mlp", "embed")),
    (r"mlp_out/bias", ("embed",)),
    (r"ln_(attention|mlp|final)/(scale|bias)", ("norm",)),
)

ACTIVATIONS = {"gelu": lambda x: nn.gelu(x, approximate=False),  # HF "gelu": exact (erf)
               "gelu_new": lambda x: nn.gelu(x, approximate=True),
               "relu": nn.relu}


def _head_logits(embed: nn.Embed, head_bias_V: Array, g_BxKxD: Array) -> Array:
  """Float32 logits of the tied head with its bias (``embed`` bound)."""
  return (embed.attend(g_BxKxD) + head_bias_V).astype(jnp.float32)


def relative_encoding(max_len: int, d_model: int, clamp_len: int) -> Array:
  """HF's sinusoidal encoding of the distances ``-(max_len - 1) .. max_len - 1``, in that
  order: float32 ``(2 max_len - 1) x D``, ``[sin(d w), cos(d w)]``, ``w = 10000^(-2i/D)``."""
  inv_freq = 1.0 / (10_000.0 ** (jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model))
  distance = jnp.arange(-(max_len - 1), max_len, dtype=jnp.float32)
  if clamp_len > 0:
    distance = jnp.clip(distance, -clamp_len, clamp_len)
  angles = distance[:, None] * inv_freq
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class RelativeAttention(nn.Module):
  """XLNet's relative attention of all rows onto the content rows' keys, with its output
  projection (the residual and LayerNorm are the caller's)."""
  num_heads: int
  max_len: int
  clamp_len: int
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x_BxTxD: Array, positions_BxT: Array, key_positions_BxS: Array,
               num_content: int, visibility: masks.Visibility, cache: LayerCache | None = None,
               cache_slots_BxR: Array | None = None) -> tuple[Array, LayerCache | None]:
    """Rows ``T = R + K``, the first ``R = num_content`` content rows; cache as in two_stream."""
    width = x_BxTxD.shape[-1]
    head_dim = width // self.num_heads
    init = nn.initializers.normal(0.02)
    dense = lambda name: nn.DenseGeneral(
        (self.num_heads, head_dim), use_bias=False, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=init, name=name)
    q_BxTxNxH = dense("query")(x_BxTxD)
    content_BxRxD = x_BxTxD[:, :num_content]
    k_BxSxNxH, v_BxSxNxH = dense("key")(content_BxRxD), dense("value")(content_BxRxD)
    if cache is not None:
      cache = write_layer_cache(cache, k_BxSxNxH, v_BxSxNxH, cache_slots_BxR)
      k_BxSxNxH, v_BxSxNxH = cache

    bias = lambda name: self.param(name, init, (self.num_heads, head_dim), self.param_dtype)
    content_bias, position_bias = bias("content_bias"), bias("position_bias")  # r_w, r_r
    content_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH + content_bias,
                                 k_BxSxNxH.astype(q_BxTxNxH.dtype))
    # Every query against every distance, then each key's distance gathered.
    pe_PxD = relative_encoding(self.max_len, width, self.clamp_len).astype(self.dtype)
    r_PxNxH = dense("position")(pe_PxD)
    by_distance_BxNxTxP = jnp.einsum("btnh,pnh->bntp", q_BxTxNxH + position_bias, r_PxNxH)
    distance_BxTxS = positions_BxT[:, :, None] - key_positions_BxS[:, None, :]
    index_BxTxS = jnp.clip(distance_BxTxS + self.max_len - 1, 0, 2 * self.max_len - 2)
    position_BxNxTxS = jnp.take_along_axis(by_distance_BxNxTxP, index_BxTxS[:, None], axis=3)

    scores = (content_BxNxTxS + position_BxNxTxS).astype(jnp.float32) / head_dim ** 0.5
    visible_Bx1xTxS = masks.dense(visibility)[:, None]
    probs = jax.nn.softmax(jnp.where(visible_Bx1xTxS, scores, -1e30), axis=-1)
    probs = jnp.where(visible_Bx1xTxS.any(-1, keepdims=True), probs, 0.0)
    out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", probs.astype(self.dtype),
                             v_BxSxNxH.astype(self.dtype))
    out_BxTxD = nn.DenseGeneral(width, axis=(-2, -1), use_bias=False, dtype=self.dtype,
                                param_dtype=self.param_dtype, kernel_init=init,
                                name="out")(out_BxTxNxH)
    return out_BxTxD, cache


class Block(nn.Module):
  """One XLNet layer on the ``[content; query]`` rows: post-LN attention, post-LN feed-forward."""
  num_heads: int
  d_ff: int
  max_len: int
  clamp_len: int
  activation: str
  layer_norm_eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x_BxTxD: Array, positions_BxT: Array, key_positions_BxS: Array,
               num_content: int, visibility: masks.Visibility, cache: LayerCache | None = None,
               cache_slots_BxR: Array | None = None) -> tuple[Array, LayerCache | None]:
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps, use_fast_variance=False,
                                     dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    init = nn.initializers.normal(0.02)
    attended, cache = RelativeAttention(self.num_heads, self.max_len, self.clamp_len, self.dtype,
                                        self.param_dtype, name="attention")(
        x_BxTxD, positions_BxT, key_positions_BxS, num_content, visibility, cache,
        cache_slots_BxR)
    x_BxTxD = norm("ln_attention")(x_BxTxD + attended)
    h = nn.Dense(self.d_ff, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init,
                 name="mlp_in")(x_BxTxD)
    h = nn.Dense(x_BxTxD.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
                 kernel_init=init, name="mlp_out")(ACTIVATIONS[self.activation](h))
    return norm("ln_mlp")(x_BxTxD + h), cache


class XLNetTransformer(nn.Module):
  """XLNet as an any-subset two-stream model: the call of ``TwoStreamTransformer``.

  ``tokens_BxL``, ``positions_BxL``, ``target_positions_BxK``, ``visibility`` (and optionally
  ``cache``, ``cache_slots_BxL``, ``head``) as there; returns
  float32 ``logits_BxKxV``, or ``(logits, new_cache)`` with a cache. With ``head=False`` the
  logits are replaced by the query rows' final features ``g_BxKxD`` (what the tied head
  reads), and :meth:`logits` applies the head to them. Positions must be ``< max_len``.
  """
  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  max_len: int = 512
  clamp_len: int = -1  # HF's clamp_len: distances clipped to +-clamp_len when > 0
  activation: str = "gelu"  # HF's ff_activation
  layer_norm_eps: float = 1e-12
  num_special_tokens: int = 4  # ids [0, num_special_tokens) are never sampled.
  causal_prompt: bool = False  # read by the callers' mask builder, not by the module.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str = "xla"  # only "xla": the dense relative term has no fused kernel.
  tie_embeddings: bool = True  # always: XLNet ties the LM head to the word embedding.

  @nn.compact
  def __call__(self, tokens_BxL: Array, positions_BxL: Array, target_positions_BxK: Array,
               visibility: masks.Visibility, cache: Cache | None = None,
               cache_slots_BxL: Array | None = None, head: bool = True):
    batch, length = tokens_BxL.shape
    num_targets = target_positions_BxK.shape[1]
    init = nn.initializers.normal(0.02)
    embed = self._embed()
    mask_embedding = self.param("mask_embedding", init, (self.d_model,), self.param_dtype)
    g_BxKxD = jnp.broadcast_to(mask_embedding.astype(self.dtype),
                               (batch, num_targets, self.d_model))
    x_BxTxD = jnp.concatenate([embed(tokens_BxL), g_BxKxD], axis=1)
    positions_BxT = jnp.concatenate([positions_BxL, target_positions_BxK], axis=1)
    if cache is None:
      key_positions_BxS = positions_BxL
    else:
      key_positions_BxS = cache.positions_BxS.at[jnp.arange(batch)[:, None], cache_slots_BxL].set(
          positions_BxL, mode="drop")
    new_layers = []
    for i in range(self.num_layers):
      x_BxTxD, layer_cache = Block(
          self.num_heads, self.d_ff, self.max_len, self.clamp_len, self.activation,
          self.layer_norm_eps, self.dtype, self.param_dtype, name=f"block_{i}")(
              x_BxTxD, positions_BxT, key_positions_BxS, length, visibility,
              None if cache is None else cache.layers[i], cache_slots_BxL)
      new_layers.append(layer_cache)

    head_bias = self.param("head_bias", nn.initializers.zeros, (self.vocab_size,),
                           self.param_dtype)
    g_BxKxD = x_BxTxD[:, length:]
    out = _head_logits(embed, head_bias, g_BxKxD) if head else g_BxKxD
    return out if cache is None else (out, Cache(key_positions_BxS, tuple(new_layers)))

  def logits(self, g_BxKxD: Array) -> Array:
    """The head of :meth:`__call__` on its ``head=False`` features ``g_BxKxD``: float32
    ``logits_BxKxV``, from the same parameters (``embed`` and ``head_bias``)."""
    params = self.variables["params"]
    embed = self._embed(parent=None).bind({"params": params["embed"]})
    return _head_logits(embed, params["head_bias"], g_BxKxD)

  def _embed(self, **parent: Any) -> nn.Embed:
    """The word embedding ``embed``, tied to the head."""
    return nn.Embed(self.vocab_size, self.d_model, embedding_init=nn.initializers.normal(0.02),
                    dtype=self.dtype, param_dtype=self.param_dtype, name="embed", **parent)

  def init_cache(self, batch: int, length: int) -> Cache:
    """An empty rank-indexed KV cache: per layer, keys and values ``B x L x N x H``."""
    shape = (batch, length, self.num_heads, self.d_model // self.num_heads)
    return Cache(jnp.zeros((batch, length), jnp.int32),
                 tuple(LayerCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))
                       for _ in range(self.num_layers)))
