"""The floor for one sampling call: a plain causal transformer with a KV cache.

  python -m benchmarks floor_model --batches=1,64 --rows=1,16,36,80,160

12 layers, d=768, 12 heads, 3072 MLP, 32k vocabulary (110M, like xlnet_base), bf16, a
512-slot KV cache written with ``dynamic_update_slice``, pre-LN, tied head on the new rows,
and no mask other than "slot < filled". Calls run back to back inside one jitted
``lax.fori_loop``, so the figure is device time per call with no host round trip: what a
compiled sampler of a 110M model should come near. :mod:`benchmarks.call_cost` times it
beside our own call. One record per (batch, rows).
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import cli, common, records

LAYERS, WIDTH, HEADS, MLP, VOCAB, SLOTS = 12, 768, 12, 3072, 32000, 512


def init(rng: jax.Array) -> dict:
  """Random bf16 weights of the floor model."""
  keys = iter(jax.random.split(rng, 8))
  normal = lambda shape: (0.02 * jax.random.normal(next(keys), shape)).astype(jnp.bfloat16)
  layer = lambda: {"qkv": normal((LAYERS, WIDTH, 3 * WIDTH)), "out": normal((LAYERS, WIDTH, WIDTH)),
                   "mlp_in": normal((LAYERS, WIDTH, MLP)), "mlp_out": normal((LAYERS, MLP, WIDTH))}
  return dict(layer(), embed=normal((VOCAB, WIDTH)))


def _norm(x):
  x = x.astype(jnp.float32)
  return ((x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-6)
          ).astype(jnp.bfloat16)


def call(params: dict, cache_k, cache_v, tokens_BxR, start):
  """One call: ``R`` new tokens per row at slots ``start..start+R-1``; logits ``B x R x V``.

  ``cache_k``, ``cache_v``: ``layers x B x SLOTS x heads x head_dim``.
  """
  batch, rows = tokens_BxR.shape
  head_dim = WIDTH // HEADS
  x = params["embed"][tokens_BxR]
  slot = jnp.arange(SLOTS)
  visible = slot[None, :] <= start + jnp.arange(rows)[:, None]  # R x SLOTS
  for i in range(LAYERS):
    h = _norm(x) @ params["qkv"][i]
    q, k, v = (t.reshape(batch, rows, HEADS, head_dim) for t in jnp.split(h, 3, -1))
    cache_k = jax.lax.dynamic_update_slice(cache_k, k[None], (i, 0, start, 0, 0))  # in place
    cache_v = jax.lax.dynamic_update_slice(cache_v, v[None], (i, 0, start, 0, 0))
    scores = jnp.einsum("brnh,bsnh->bnrs", q, cache_k[i]).astype(jnp.float32) / head_dim ** 0.5
    weights = jax.nn.softmax(jnp.where(visible, scores, -1e30), -1).astype(jnp.bfloat16)
    attended = jnp.einsum("bnrs,bsnh->brnh", weights, cache_v[i]).reshape(batch, rows, WIDTH)
    x = x + attended @ params["out"][i]
    x = x + jax.nn.gelu(_norm(x) @ params["mlp_in"][i]) @ params["mlp_out"][i]
  logits = (_norm(x) @ params["embed"].T).astype(jnp.float32)
  return logits, cache_k, cache_v


def ms_per_call(batch: int, rows: int, calls: int = 200, repeats: int = 3) -> float:
  """Median device time of one call (``calls`` back to back in one ``fori_loop``)."""
  params = init(jax.random.PRNGKey(0))
  shape = (LAYERS, batch, SLOTS, HEADS, WIDTH // HEADS)
  cache = jnp.asarray(np.random.default_rng(0).normal(size=shape) * 0.1, jnp.bfloat16)

  @jax.jit
  def loop(params, cache_k, cache_v):
    def body(i, carry):
      cache_k, cache_v, tokens = carry
      start = 256 + (i % (SLOTS - 256 - rows + 1))
      logits, cache_k, cache_v = call(params, cache_k, cache_v, tokens, start)
      return cache_k, cache_v, jnp.argmax(logits, -1).astype(jnp.int32)
    tokens = jnp.zeros((batch, rows), jnp.int32)
    return jax.lax.fori_loop(0, calls, body, (cache_k, cache_v, tokens))[2]

  return common.ms_per_call(loop, (params, cache, cache), calls, repeats)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--batches", type=cli.list_of(int), default="1,64", help="batch sizes")
  parser.add_argument("--rows", type=cli.list_of(int), default="1,16,36,80,160",
                      help="new rows per sequence per call")
  parser.add_argument("--calls", type=int, default=200, help="calls per timed loop")


def run(batches: list[int] = (1,), rows: list[int] = (1,), calls: int = 200) -> list[dict]:
  """Milliseconds per call of the floor model at every batch size and row count."""
  return [records.make("floor_model", {"batch": batch, "rows": r, "calls": calls},
                       {"ms_per_call": ms_per_call(batch, r, calls)},
                       {"layers": LAYERS, "width": WIDTH, "heads": HEADS, "mlp": MLP,
                        "vocab": VOCAB, "slots": SLOTS, "dtype": "bfloat16"})
          for batch in batches for r in rows]
