"""XLNet-style two-stream transformer, in flax.linen.

The content stream (``L`` rows) carries token embeddings; the query stream (``K`` rows) starts
from one learned ``<mask>`` vector and never sees its own token. Both streams share every
weight, so each layer runs them as one sequence of ``L + K`` rows that attend to keys and
values computed from the content rows only. What each row may see is decided entirely by the
masks of :mod:`asarm_jax.masks`; the module itself is order-agnostic.

Positions are the true sequence positions, never ranks. They enter twice: a learned absolute
embedding added to both streams' inputs (so the query stream's input is the ``<mask>`` vector
plus its position, as in XLNet, and a content-independent "attend to position p - 1" is easy to
learn), and rotary embeddings (RoPE) on queries and keys. Both make a key depend on its own
position and on the content it has seen, never on the order it was generated in or on the rows
that query it, so a content key computed once stays valid for every later call: that is what
lets decoding keep an append-only KV cache indexed by rank. (A rank-dependent position, or
relative-position terms recomputed per query set, would invalidate cached keys.)

Attention scores also get an ALiBi bias, ``-slope_h * |p_query - p_key|`` with fixed geometric
per-head slopes (Press et al. 2022), symmetric because the prompt lies on both sides. The query
stream reaches context only through attention, so without a content-independent recency
preference it sits on a long unigram plateau early in training (seen on stdlib code: ~300 more
steps to leave it). The bias depends on true positions only, so it too survives caching
(``model.alibi=False`` turns it off for ablations).

Every layer also has a learned attention *sink*: a key/value slot every row may attend to.
It is the "nothing yet" context of the first target of a causal LM (no visible prompt), and it
keeps the softmax of rows with no visible key finite.

:data:`PARAM_AXES` names the logical axes of every parameter; ``config.mesh.rules`` maps them
onto mesh axes (:mod:`asarm_jax.sharding`). ``model.init`` returns plain arrays.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from asarm_jax import masks
from asarm_jax.models import attention, fused_dense, invariant_matmul

Array = jnp.ndarray

# Logical axes of every parameter: (regex over the end of its path "a/b/c", axis names).
# Each parameter must match exactly one pattern (asarm_jax.sharding raises otherwise), so a new
# parameter cannot silently stay unsharded.
PARAM_AXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"embed/embedding", ("vocab", "embed")),
    (r"position_embed/embedding", ("position", "embed")),
    (r"mask_embedding", ("embed",)),
    (r"head/kernel", ("embed", "vocab")),
    (r"attention/(query|key|value)/kernel", ("embed", "heads", "kv")),
    (r"attention/out/kernel", ("heads", "kv", "embed")),
    (r"attention/sink_(key|value)", ("heads", "kv")),
    (r"mlp_in/kernel", ("embed", "mlp")),
    (r"mlp_in/bias", ("mlp",)),
    (r"mlp_out/kernel", ("mlp", "embed")),
    (r"mlp_out/bias", ("embed",)),
    (r"ln_(attention|mlp|final)/(scale|bias)", ("norm",)),
)


class LayerCache(NamedTuple):
  """One layer's content keys (already rotated: RoPE depends on the key's own position only)
  and values, ``B x S x N x H``, indexed by rank."""
  key: Array
  value: Array


def write_layer_cache(cache: LayerCache, k_BxRxNxH: Array, v_BxRxNxH: Array,
                      slots_BxR: Array) -> LayerCache:
  """Writes R rows' keys and values at their slots. Slots out of range are dropped, but for
  one row of one slot (a batch-1 decoding call), which is clamped into range instead: a
  sampler writes out of range only for a finished row, whose slots no call reads again. A
  scatter checks its bounds by reading the slot back and selecting, which on the GPU took two
  kernels a layer more than the in-place update (xlnet_base, sequential at batch 1: 245
  kernels a call, 220 without: ``benchmarks/compiled_kernels.py``)."""
  if k_BxRxNxH.shape[:2] == (1, 1):
    start = (0, slots_BxR[0, 0], 0, 0)
    write = lambda old, new: jax.lax.dynamic_update_slice(old, new.astype(old.dtype), start)
  else:
    rows_Bx1 = jnp.arange(k_BxRxNxH.shape[0])[:, None]
    write = lambda old, new: old.at[rows_Bx1, slots_BxR].set(new.astype(old.dtype),
                                                             mode="drop")
  return LayerCache(write(cache.key, k_BxRxNxH), write(cache.value, v_BxRxNxH))


class Cache(NamedTuple):
  """A rank-indexed KV cache: the true position of each slot and every layer's keys/values."""
  positions_BxS: Array
  layers: tuple[LayerCache, ...]


def rotary(x_BxTxNxH: Array, positions_BxT: Array, base: float) -> Array:
  """Applies rotary position embeddings (rotate-half form) at the given true positions."""
  with jax.named_scope("rotary"):
    half = x_BxTxNxH.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions_BxT[..., None].astype(jnp.float32) * inv_freq  # B x T x H/2
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxH.dtype)


def attend_cached(layer: Layer, q_BxTxNxH: Array, k_BxRxNxH: Array, v_BxRxNxH: Array,
                  sink_key_NxH: Array, sink_value_NxH: Array, positions_BxT: Array,
                  key_positions_BxS: Array, visibility: masks.Visibility,
                  cache: LayerCache | None, cache_slots_BxR: Array | None
                  ) -> tuple[Array, LayerCache | None]:
  """Attention of the ``T`` rows' projections (the first ``R`` rows are content rows, whose
  keys and values are given): queries and keys rotated, the keys and values written at
  ``cache_slots_BxR`` and the whole cache attended where there is a cache (``S`` its length),
  else the ``R`` keys (``S = R``). Returns ``B x T x N x H`` and the cache."""
  q_BxTxNxH = rotary(q_BxTxNxH, positions_BxT, layer.rope_base)
  k_BxRxNxH = rotary(k_BxRxNxH, positions_BxT[:, :k_BxRxNxH.shape[1]], layer.rope_base)
  if cache is not None:
    cache = write_layer_cache(cache, k_BxRxNxH, v_BxRxNxH, cache_slots_BxR)
    k_BxRxNxH, v_BxRxNxH = cache
  out_BxTxNxH = attention.attend(
      q_BxTxNxH, k_BxRxNxH, v_BxRxNxH, sink_key_NxH, sink_value_NxH, visibility, positions_BxT,
      key_positions_BxS, layer.alibi, layer.attention_impl, layer.batch_invariant)
  return out_BxTxNxH, cache


def dot_general(batch_invariant: bool) -> Any:
  """The matmul of every Dense: XLA's (``None``) or the batch-invariant kernel."""
  return invariant_matmul.dot_general if batch_invariant else None


@dataclasses.dataclass(frozen=True)
class Layer:
  """What a layer's modules share (from :class:`TwoStreamTransformer`'s fields)."""
  num_heads: int
  d_ff: int
  rope_base: float
  alibi: bool
  dtype: Any
  param_dtype: Any
  out_init_std: float
  attention_impl: str
  fused_decoding: bool  # TwoStreamTransformer.fused_decoding
  batch_invariant: bool  # TwoStreamTransformer.batch_invariant

  def dense(self) -> dict[str, Any]:
    """The keywords of every Dense and DenseGeneral of a layer."""
    return dict(dtype=self.dtype, param_dtype=self.param_dtype,
                dot_general=dot_general(self.batch_invariant))

  def fuses(self, num_rows: int, width: int) -> bool:
    """Whether a cached call of ``num_rows`` rows (over the batch) runs each block through
    :mod:`asarm_jax.models.fused_dense` (:meth:`Block.fused`): on one device (XLA cannot
    partition a Pallas call over a mesh, and the kernels take whole weights)."""
    mesh = jax.sharding.get_abstract_mesh()
    return (self.fused_decoding and self.attention_impl == "pallas" and not self.batch_invariant
            and (mesh.empty or mesh.size == 1)
            and fused_dense.supports(num_rows, width, (width, self.d_ff)))

  def norm(self, name: str) -> nn.Module:
    """A LayerNorm: flax's, or with fixed-order statistics when batch-invariant."""
    module = InvariantLayerNorm if self.batch_invariant else nn.LayerNorm
    return module(dtype=self.dtype, param_dtype=self.param_dtype, name=name)


class InvariantLayerNorm(nn.Module):
  """``nn.LayerNorm``'s parameters and function (float32 statistics, ``var = E[x^2] - E[x]^2``
  clipped at 0), its row sums by :func:`invariant_matmul.row_sum` (XLA's reductions may round
  a row differently per shape)."""
  dtype: Any
  param_dtype: Any
  epsilon: float = 1e-6  # nn.LayerNorm's

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    width = x_BxTxD.shape[-1]
    scale_D = self.param("scale", nn.initializers.ones, (width,), self.param_dtype)
    bias_D = self.param("bias", nn.initializers.zeros, (width,), self.param_dtype)
    x_NxD = x_BxTxD.reshape(-1, width).astype(jnp.float32)
    sums_2N = invariant_matmul.row_sum(jnp.concatenate([x_NxD, x_NxD * x_NxD]))
    mean_Nx1, square_Nx1 = jnp.split(sums_2N[:, None] / width, 2)
    var_Nx1 = jnp.maximum(0.0, square_Nx1 - mean_Nx1 * mean_Nx1)
    y_NxD = (x_NxD - mean_Nx1) * (jax.lax.rsqrt(var_Nx1 + self.epsilon) * scale_D) + bias_D
    return y_NxD.reshape(x_BxTxD.shape).astype(self.dtype)


class Attention(nn.Module):
  """Multi-head attention of all rows onto the content rows' keys, plus a learned sink."""
  layer: Layer

  @nn.compact
  def __call__(self, x_BxTxD: Array, positions_BxT: Array, key_positions_BxS: Array,
               num_content: int, visibility: masks.Visibility, cache: LayerCache | None = None,
               cache_slots_BxR: Array | None = None) -> tuple[Array, LayerCache | None]:
    """Rows ``T = R + K``: the first ``R = num_content`` are content rows.

    Without a cache the keys are the R content rows (``S = R``). With one, the content rows'
    keys and values are first written at ``cache_slots_BxR`` (:func:`write_layer_cache`)
    and every row attends over the whole cache (``S`` = cache length).
    """
    layer = self.layer
    width = x_BxTxD.shape[-1]
    head_dim = width // layer.num_heads
    # Fan-in scaled (1/sqrt(d)) so attention scores are O(1) at init: with a fixed small std
    # (0.02) the q.k products start near zero, attention is uniform and the query stream sits
    # on a long unigram plateau, since it can only reach context through attention.
    dense = lambda name: nn.DenseGeneral(
        (layer.num_heads, head_dim), use_bias=False,
        kernel_init=nn.initializers.lecun_normal(), name=name, **layer.dense())
    content_BxRxD = x_BxTxD[:, :num_content]
    sink_init = nn.initializers.normal(0.02)
    out_BxTxNxH, cache = attend_cached(
        layer, dense("query")(x_BxTxD), dense("key")(content_BxRxD),
        dense("value")(content_BxRxD),
        self.param("sink_key", sink_init, (layer.num_heads, head_dim), layer.param_dtype),
        self.param("sink_value", sink_init, (layer.num_heads, head_dim), layer.param_dtype),
        positions_BxT, key_positions_BxS, visibility, cache, cache_slots_BxR)
    out_BxTxD = nn.DenseGeneral(width, axis=(-2, -1), use_bias=False,
                                kernel_init=nn.initializers.normal(layer.out_init_std),
                                name="out", **layer.dense())(out_BxTxNxH)
    return out_BxTxD, cache


@jax.checkpoint
def _gelu_of_biased(h_BxTxF: Array, bias_F: Array) -> Array:
  """``gelu(h + bias)``, recomputed from ``h`` in the backward pass (``jax.checkpoint``)."""
  return nn.gelu(h_BxTxF + bias_F)


class GeluDense(nn.Module):
  """``gelu(x @ kernel + bias)``: ``nn.Dense``'s parameters (names, shapes, initialisers) and
  forward values, with the bias and the GELU recomputed in the backward pass from the
  matmul's output, which the backward reads anyway. Differentiated as written, the step saved
  the GELU's ``tanh`` for the backward: a ``d_ff``-wide tensor a layer written and read again
  (403 MB a layer at xlnet_base's batch of 64 x 2 x 512 rows; ``compiled_kernels
  --train_step=true``)."""
  features: int
  dtype: Any
  param_dtype: Any
  dot_general: Any = None

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    kernel_DxF = self.param("kernel", nn.initializers.lecun_normal(),
                            (x_BxTxD.shape[-1], self.features), self.param_dtype)
    bias_F = self.param("bias", nn.initializers.zeros_init(), (self.features,),
                        self.param_dtype)
    x_BxTxD, kernel_DxF, bias_F = nn.dtypes.promote_dtype(x_BxTxD, kernel_DxF, bias_F,
                                                          dtype=self.dtype)
    h_BxTxF = (self.dot_general or jax.lax.dot_general)(
        x_BxTxD, kernel_DxF, (((x_BxTxD.ndim - 1,), (0,)), ((), ())))
    return _gelu_of_biased(h_BxTxF, bias_F)


class Block(nn.Module):
  """Pre-LN transformer block applied to the concatenated ``[content; query]`` rows."""
  layer: Layer

  @nn.compact
  def __call__(self, x_BxTxD: Array, positions_BxT: Array, key_positions_BxS: Array,
               num_content: int, visibility: masks.Visibility, cache: LayerCache | None = None,
               cache_slots_BxR: Array | None = None) -> tuple[Array, LayerCache | None]:
    layer = self.layer
    if (cache is not None and not self.is_initializing()
        and layer.fuses(x_BxTxD.shape[0] * x_BxTxD.shape[1], x_BxTxD.shape[2])):
      return self.fused(x_BxTxD, positions_BxT, key_positions_BxS, num_content, visibility,
                        cache, cache_slots_BxR)
    attended, cache = Attention(layer, name="attention")(
        layer.norm("ln_attention")(x_BxTxD), positions_BxT, key_positions_BxS, num_content,
        visibility, cache, cache_slots_BxR)
    x_BxTxD = x_BxTxD + attended
    h = layer.norm("ln_mlp")(x_BxTxD)
    h = GeluDense(layer.d_ff, name="mlp_in", **layer.dense())(h)
    h = nn.Dense(x_BxTxD.shape[-1], kernel_init=nn.initializers.normal(layer.out_init_std),
                 name="mlp_out", **layer.dense())(h)
    return x_BxTxD + h, cache

  def fused(self, x_BxTxD: Array, positions_BxT: Array, key_positions_BxS: Array,
            num_content: int, visibility: masks.Visibility, cache: LayerCache,
            cache_slots_BxR: Array) -> tuple[Array, LayerCache]:
    """The block of a decoding call (:meth:`Layer.fuses`) from the same parameters, three of
    its dense parts as kernels of :func:`fused_dense.dense` around the attention: LayerNorm
    with the query, key and value projections (of every row: the content rows' keys and
    values are then sliced, cheaper than a kernel more); the output projection with the
    residual add; LayerNorm with the MLP's first matmul, bias and GELU. The MLP's second
    matmul (3072 deep at xlnet_base) stays XLA's, which splits the depth among programs and
    adds bias and residual as it sums the splits. XLA's form ran 16 kernels a layer
    (xlnet_base, sequential at batch 1)."""
    layer, params = self.layer, self.variables["params"]
    batch, num_rows, width = x_BxTxD.shape
    heads = (batch, num_rows, layer.num_heads, width // layer.num_heads)
    attn = params["attention"]
    weight = lambda module, depth=width: module["kernel"].astype(layer.dtype).reshape(depth, -1)
    norm = lambda name: fused_dense.Norm(params[name]["scale"], params[name]["bias"],
                                         nn.LayerNorm.epsilon)
    x_MxD = x_BxTxD.reshape(batch * num_rows, width)
    q_MxD, k_MxD, v_MxD = fused_dense.dense(
        x_MxD, [weight(attn[name]) for name in ("query", "key", "value")],
        norm=norm("ln_attention"))
    content = lambda y_MxD: y_MxD.reshape(heads)[:, :num_content]
    attended_BxTxNxH, cache = attend_cached(
        layer, q_MxD.reshape(heads), content(k_MxD), content(v_MxD),
        attn["sink_key"], attn["sink_value"], positions_BxT,
        key_positions_BxS, visibility, cache, cache_slots_BxR)
    x_MxD, = fused_dense.dense(attended_BxTxNxH.reshape(x_MxD.shape),
                               [weight(attn["out"])], residual_MxN=x_MxD)
    h_MxF, = fused_dense.dense(x_MxD, [weight(params["mlp_in"])], norm=norm("ln_mlp"),
                               bias_N=params["mlp_in"]["bias"], gelu=True)
    out = params["mlp_out"]
    h_MxD = h_MxF @ weight(out, layer.d_ff) + out["bias"].astype(layer.dtype)  # nn.Dense's
    return (x_MxD + h_MxD).reshape(x_BxTxD.shape), cache


class TwoStreamTransformer(nn.Module):
  """Two-stream any-subset transformer.

  Call with rows in any order (rank space by convention; see :mod:`asarm_jax.ordering`):

  * ``tokens_BxL``, ``positions_BxL``: content rows and their true positions;
  * ``target_positions_BxK``: true positions of the ``K`` query (target) rows;
  * ``visibility``: a :class:`asarm_jax.masks.Visibility` over the ``L + K`` rows (content
    rows first) and the keys (the L content rows, or the cache's S slots).

  Returns float32 ``logits_BxKxV`` for the K target rows. With ``cache`` (from
  :meth:`init_cache`) the ``L`` content rows may be just the new ones: their keys/values are
  written at ``cache_slots_BxL``, the keys are the cache's slots, and the call returns
  ``(logits, new_cache)``. With ``head=False`` it returns the query rows' final features
  ``g_BxKxD`` (after ``ln_final``) instead of the logits; :meth:`logits` applies the head to
  them (``model.apply(params, g, method=TwoStreamTransformer.logits)``), so a caller can run
  the head only on the rows it uses. Initialise with
  ``model.init(rng, *example_inputs(batch, length, num_targets))``.
  """
  # Every field is a key of config.model; its default lives in asarm_jax.config_base only.
  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  rope_base: float
  alibi: bool
  max_len: int  # positions must be < max_len
  tie_embeddings: bool
  num_special_tokens: int  # ids [0, num_special_tokens) are never sampled.
  causal_prompt: bool  # read by the callers' mask builder, not by the module.
  dtype: Any
  param_dtype: Any
  # asarm_jax.models.attention.IMPLEMENTATIONS; the parameters are the same for all;
  # models.build replaces it by "xla" where the kernel does not run.
  attention_impl: str
  # A cached call of at most fused_dense.MAX_ROWS rows (decoding) runs most of each block's dense
  # parts as fused kernels (Block.fused) where the attention kernel runs ("pallas", not
  # batch-invariant). Off by default: fewer kernels (xlnet_base, sequential at batch 1: 139
  # against 211) but little faster yet (0.434 against 0.446 ms a call on the H100, 2026-12-06).
  fused_decoding: bool
  # Not a config key: decoding sets it (sampling.generate(..., deterministic=True)). Every
  # matmul through the fixed-tiling kernel of models.invariant_matmul and attention through the
  # fused kernel, so a row's outputs never depend on the call's shape (forward only).
  batch_invariant: bool = False

  @nn.compact
  def __call__(self, tokens_BxL: Array, positions_BxL: Array, target_positions_BxK: Array,
               visibility: masks.Visibility, cache: Cache | None = None,
               cache_slots_BxL: Array | None = None, head: bool = True):
    batch, length = tokens_BxL.shape
    num_targets = target_positions_BxK.shape[1]
    embed = self._embed()
    mask_embedding = self.param("mask_embedding", nn.initializers.normal(0.02),
                                (self.d_model,), self.param_dtype)
    g_BxKxD = jnp.broadcast_to(mask_embedding.astype(self.dtype),
                               (batch, num_targets, self.d_model))
    positions_BxT = jnp.concatenate([positions_BxL, target_positions_BxK], axis=1)
    pos_embed = nn.Embed(self.max_len, self.d_model, embedding_init=nn.initializers.normal(0.02),
                         dtype=self.dtype, param_dtype=self.param_dtype, name="position_embed")
    x_BxTxD = jnp.concatenate([embed(tokens_BxL), g_BxKxD], axis=1) + pos_embed(positions_BxT)

    layer = Layer(self.num_heads, self.d_ff, self.rope_base, self.alibi, self.dtype,
                  self.param_dtype, out_init_std=0.02 / (2 * self.num_layers) ** 0.5,
                  attention_impl=self._attention_impl(), fused_decoding=self.fused_decoding,
                  batch_invariant=self.batch_invariant)
    if cache is None:
      key_positions_BxS = positions_BxL
    else:
      key_positions_BxS = cache.positions_BxS.at[jnp.arange(batch)[:, None], cache_slots_BxL].set(
          positions_BxL, mode="drop")
    new_layers = []
    for i in range(self.num_layers):
      x_BxTxD, layer_cache = Block(layer, name=f"block_{i}")(
          x_BxTxD, positions_BxT, key_positions_BxS, length, visibility,
          None if cache is None else cache.layers[i], cache_slots_BxL)
      new_layers.append(layer_cache)

    g_BxKxD = layer.norm("ln_final")(x_BxTxD[:, length:])
    out = (self._head_logits(embed if self.tie_embeddings else self._head(), g_BxKxD) if head
           else g_BxKxD)
    return out if cache is None else (out, Cache(key_positions_BxS, tuple(new_layers)))

  def logits(self, g_BxKxD: Array) -> Array:
    """The head of :meth:`__call__` on its ``head=False`` features ``g_BxKxD``: float32
    ``logits_BxKxV``, from the same parameters (the tied ``embed`` or the ``head`` Dense)."""
    module = self._embed(parent=None) if self.tie_embeddings else self._head(parent=None)
    bound = module.bind({"params": self.variables["params"][module.name]})
    return self._head_logits(bound, g_BxKxD)

  def _attention_impl(self) -> str:
    """``attention_impl``, but always the fused kernel when batch-invariant."""
    return "pallas" if self.batch_invariant else self.attention_impl

  def _head_logits(self, head: nn.Embed | nn.Dense, g_BxKxD: Array) -> Array:
    """Float32 logits of a bound head: the embedding's ``attend`` (tied) or the Dense."""
    if not isinstance(head, nn.Embed):
      logits = head(g_BxKxD)
    elif self.batch_invariant:
      logits = invariant_matmul.attend_embedding(g_BxKxD.astype(self.dtype),
                                                head.embedding.astype(self.dtype))
    else:
      logits = head.attend(g_BxKxD)
    return logits.astype(jnp.float32)

  def _embed(self, **parent: Any) -> nn.Embed:
    """The word embedding ``embed`` (also the head when tied)."""
    return nn.Embed(self.vocab_size, self.d_model, embedding_init=nn.initializers.normal(0.02),
                    dtype=self.dtype, param_dtype=self.param_dtype, name="embed", **parent)

  def _head(self, **parent: Any) -> nn.Dense:
    """The untied output head ``head``."""
    return nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype,
                    param_dtype=self.param_dtype, kernel_init=nn.initializers.normal(0.02),
                    dot_general=dot_general(self.batch_invariant), name="head", **parent)

  def init_cache(self, batch: int, length: int) -> Cache:
    """An empty rank-indexed KV cache: per layer, keys and values ``B x S x N x H``.

    ``S`` is ``length`` rounded up to whole key blocks of the fused kernel when it is in use
    (:data:`asarm_jax.models.attention.BLOCK_K`), so that no call pads, i.e. copies, the
    cache; the extra slots have ranks ``>= length``, which no limit reaches.
    """
    if self._attention_impl() == "pallas":
      length = -(-length // attention.BLOCK_K) * attention.BLOCK_K
    shape = (batch, length, self.num_heads, self.d_model // self.num_heads)
    return Cache(jnp.zeros((batch, length), jnp.int32),
                 tuple(LayerCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))
                       for _ in range(self.num_layers)))


def example_inputs(batch: int, length: int, num_targets: int) -> tuple[Any, ...]:
  """Dummy inputs of the right shapes and dtypes for ``model.init``."""
  tokens = jnp.zeros((batch, length), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  return (tokens, positions, positions[:, :num_targets],
          masks.Visibility(jnp.ones((batch, length + num_targets), jnp.int32), positions))
