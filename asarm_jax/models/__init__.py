"""Model construction from an ml_collections config."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from asarm_jax.models import attention
from asarm_jax.models.two_stream import TwoStreamTransformer, example_inputs
from asarm_jax.models.xlnet import ACTIVATIONS, XLNetTransformer

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


ARCHS = ("two_stream", "xlnet")


def build(config: ml_collections.ConfigDict) -> TwoStreamTransformer | XLNetTransformer:
  """Builds the model of ``config`` (the ``config.model`` block).

  ``arch`` (default "two_stream") picks :class:`TwoStreamTransformer` or, with "xlnet",
  :class:`XLNetTransformer` (HF XLNet's network, see :func:`build_xlnet`).

  Keys: vocab_size, num_layers, d_model, num_heads, d_ff, and optionally max_len, rope_base, alibi,
  tie_embeddings, num_special_tokens, causal_prompt, dtype ("bfloat16" for bf16 compute),
  param_dtype and attention_impl (:mod:`asarm_jax.models.attention`). ``"pallas"`` (the fused
  kernel; per shard under a mesh) applies only on GPUs and ``"cudnn"`` only on GPUs with 16-bit
  compute; both fall back to the reference ``"xla"`` elsewhere, so a checkpoint trained with
  either loads and samples anywhere: the implementation never changes the parameters.
  Initialise with ``model.init(rng, *models.example_inputs(B, L, K))``.
  """
  arch = config.get("arch", "two_stream")
  if arch not in ARCHS:
    raise ValueError(f"model.arch={arch!r}: expected one of {ARCHS}")
  if arch == "xlnet":
    return build_xlnet(config)
  if config.d_model % config.num_heads or (config.d_model // config.num_heads) % 2:
    raise ValueError(f"model.num_heads={config.num_heads} must divide model.d_model="
                     f"{config.d_model} into an even head size (RoPE rotates pairs).")
  return TwoStreamTransformer(
      vocab_size=config.vocab_size, num_layers=config.num_layers, d_model=config.d_model,
      num_heads=config.num_heads, d_ff=config.d_ff,
      rope_base=config.get("rope_base", 10_000.0), alibi=config.get("alibi", True),
      max_len=config.get("max_len", 2048),
      tie_embeddings=config.get("tie_embeddings", True),
      num_special_tokens=config.get("num_special_tokens", 4),
      causal_prompt=config.get("causal_prompt", False),
      dtype=_DTYPES[config.get("dtype", "float32")],
      param_dtype=_DTYPES[config.get("param_dtype", "float32")],
      attention_impl=_attention_impl(config))


def build_xlnet(config: ml_collections.ConfigDict) -> XLNetTransformer:
  """:class:`XLNetTransformer` of ``config``: the keys of :func:`build` (not rope_base, alibi,
  tie_embeddings; attention_impl is always "xla") plus HF's clamp_len, activation (HF's
  ff_activation) and layer_norm_eps, whose defaults are xlnet-base-cased's."""
  if config.d_model % config.num_heads:
    raise ValueError(f"model.num_heads={config.num_heads} must divide model.d_model="
                     f"{config.d_model}.")
  activation = config.get("activation", "gelu")
  if activation not in ACTIVATIONS:
    raise ValueError(f"model.activation={activation!r}: expected one of {tuple(ACTIVATIONS)}")
  return XLNetTransformer(
      vocab_size=config.vocab_size, num_layers=config.num_layers, d_model=config.d_model,
      num_heads=config.num_heads, d_ff=config.d_ff, max_len=config.get("max_len", 512),
      clamp_len=config.get("clamp_len", -1), activation=activation,
      layer_norm_eps=config.get("layer_norm_eps", 1e-12),
      num_special_tokens=config.get("num_special_tokens", 4),
      causal_prompt=config.get("causal_prompt", False),
      dtype=_DTYPES[config.get("dtype", "float32")],
      param_dtype=_DTYPES[config.get("param_dtype", "float32")])


# The leaves that Dense, DenseGeneral and Embed cast to the compute dtype on every call.
_CAST_BY_MODULE = ("kernel", "embedding")


def compute_params(model: TwoStreamTransformer | XLNetTransformer, params: Any) -> Any:
  """``params`` with every weight matrix and embedding table (the leaves named ``kernel`` or
  ``embedding``) already in the model's compute dtype; other leaves are unchanged.

  ``model.apply`` gives bit-identical outputs with either: Dense, DenseGeneral and Embed cast
  those leaves to ``model.dtype`` themselves. What changes is the cost of a loop of calls (the
  samplers): with float32 parameters and bf16 compute, every call converted all 110M weights
  again, about a quarter of a batch-1 call on the H200. Cast once, outside the loop.
  """
  def cast(path: tuple, leaf: Any) -> Any:
    name = getattr(path[-1], "key", None)
    if name in _CAST_BY_MODULE and jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf.astype(model.dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(cast, params)


def _attention_impl(config: ml_collections.ConfigDict) -> str:
  impl = config.get("attention_impl", "xla")
  if impl not in attention.IMPLEMENTATIONS:
    raise ValueError(f"model.attention_impl={impl!r}: expected one of "
                     f"{attention.IMPLEMENTATIONS}")
  on_gpu = jax.default_backend() == "gpu"
  usable = on_gpu and (impl != "cudnn" or config.get("dtype") in ("bfloat16", "float16"))
  return impl if usable else "xla"


__all__ = ["ARCHS", "TwoStreamTransformer", "XLNetTransformer", "build", "build_xlnet",
           "compute_params", "example_inputs"]
