"""Model construction from an ml_collections config."""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
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

  ``arch`` picks :class:`TwoStreamTransformer` or, with "xlnet", :class:`XLNetTransformer` (HF
  XLNet's network, see :func:`build_xlnet`). Every field of the module is a key of the block
  (``dtype`` and ``param_dtype`` by name, e.g. "bfloat16"): the config base
  (:mod:`asarm_jax.config_base`) holds every key with its default, and a block that lacks one
  is an error; nothing is restated here.

  ``attention_impl`` (:mod:`asarm_jax.models.attention`): ``"pallas"`` (the fused kernel; per
  shard under a mesh) applies only on GPUs (or within ``attention.gpu_target()``) and ``"cudnn"``
  only on GPUs with 16-bit compute;
  both fall back to the reference ``"xla"`` elsewhere, so a checkpoint trained with either
  loads and samples anywhere: the implementation never changes the parameters.
  Initialise with ``model.init(rng, *models.example_inputs(B, L, K))``.
  """
  arch = config.arch if "arch" in config else ARCHS[0]
  if arch not in ARCHS:
    raise ValueError(f"model.arch={arch!r}: expected one of {ARCHS}")
  if arch == "xlnet":
    return build_xlnet(config)
  if config.d_model % config.num_heads or (config.d_model // config.num_heads) % 2:
    raise ValueError(f"model.num_heads={config.num_heads} must divide model.d_model="
                     f"{config.d_model} into an even head size (RoPE rotates pairs).")
  fields = _fields(TwoStreamTransformer, config, fixed=("batch_invariant",))
  missing = {f.name for f in dataclasses.fields(TwoStreamTransformer)} - {
      "parent", "name", "batch_invariant", *fields}
  if missing:
    raise ValueError(f"config.model lacks {sorted(missing)}: start from "
                     "asarm_jax.config_base.base_config().model")
  fields["attention_impl"] = _usable_attention(fields["attention_impl"], fields["dtype"])
  return TwoStreamTransformer(**fields)


def build_xlnet(config: ml_collections.ConfigDict) -> XLNetTransformer:
  """:class:`XLNetTransformer` of ``config``: the keys of :func:`build` but rope_base, alibi,
  tie_embeddings and attention_impl (always "xla"), plus HF's clamp_len, activation (HF's
  ff_activation) and layer_norm_eps, whose module defaults are xlnet-base-cased's."""
  if config.d_model % config.num_heads:
    raise ValueError(f"model.num_heads={config.num_heads} must divide model.d_model="
                     f"{config.d_model}.")
  fields = _fields(XLNetTransformer, config, fixed=("attention_impl", "tie_embeddings"))
  if fields.get("activation", XLNetTransformer.activation) not in ACTIVATIONS:
    raise ValueError(f"model.activation={fields['activation']!r}: expected one of "
                     f"{tuple(ACTIVATIONS)}")
  return XLNetTransformer(**fields)


def _fields(module: type[nn.Module], config: ml_collections.ConfigDict,
            fixed: tuple[str, ...] = ()) -> dict[str, Any]:
  """The keys of ``config`` that name fields of ``module`` (but ``fixed`` ones), dtypes as
  jnp dtypes."""
  names = {f.name for f in dataclasses.fields(module)} - {"parent", "name", *fixed}
  fields = {name: config[name] for name in names if name in config}
  for name in ("dtype", "param_dtype"):
    if name in fields:
      fields[name] = _DTYPES[fields[name]]
  return fields


# The leaves that their users cast to the compute dtype on every call: Dense, DenseGeneral and
# Embed their weights, attention the sink's key and value (to the queries' dtype).
_CAST_BY_USER = ("kernel", "embedding", "sink_key", "sink_value")


def compute_params(model: TwoStreamTransformer | XLNetTransformer, params: Any) -> Any:
  """``params`` with every weight matrix, embedding table and attention sink (the leaves named
  ``kernel``, ``embedding``, ``sink_key`` or ``sink_value``) already in the model's compute
  dtype; other leaves are unchanged.

  ``model.apply`` gives bit-identical outputs with either: Dense, DenseGeneral and Embed cast
  those leaves to ``model.dtype`` themselves, and attention the sinks. What changes is the cost
  of a loop of calls (the samplers): with float32 parameters and bf16 compute, every call
  converted all 110M weights again, about a quarter of a batch-1 call on the H200 (and the
  sinks took two kernels a layer, 24 of a call's 281: ``benchmarks/compiled_kernels.py``).
  Cast once, outside the loop.
  """
  def cast(path: tuple, leaf: Any) -> Any:
    name = getattr(path[-1], "key", None)
    if name in _CAST_BY_USER and jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf.astype(model.dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(cast, params)


def batch_invariant(model: TwoStreamTransformer | XLNetTransformer) -> TwoStreamTransformer:
  """``model`` computing every row independently of the call's shape (the same parameters):
  :attr:`TwoStreamTransformer.batch_invariant`. XLNet's relative attention has no fused kernel,
  so it has no such mode."""
  if not isinstance(model, TwoStreamTransformer):
    raise ValueError("deterministic decoding needs model.arch='two_stream' (XLNet's relative "
                     "attention has no batch-invariant kernel).")
  return model.clone(batch_invariant=True)


def is_batch_invariant(model: TwoStreamTransformer | XLNetTransformer) -> bool:
  """Whether ``model`` is :func:`batch_invariant`'s (XLNet never is)."""
  return isinstance(model, TwoStreamTransformer) and model.batch_invariant


def _usable_attention(impl: str, dtype: Any) -> str:
  """``impl`` where it runs (see :func:`build`), else ``"xla"``."""
  if impl not in attention.IMPLEMENTATIONS:
    raise ValueError(f"model.attention_impl={impl!r}: expected one of "
                     f"{attention.IMPLEMENTATIONS}")
  usable = not attention.interpreted() and (impl != "cudnn"
                                             or dtype in (jnp.bfloat16, jnp.float16))
  return impl if usable else "xla"


__all__ = ["ARCHS", "TwoStreamTransformer", "XLNetTransformer", "batch_invariant", "build",
           "build_xlnet", "compute_params", "example_inputs", "is_batch_invariant"]
