"""A decoding call's dense parts: the fused kernels against XLA's kernels for the same work.

  python -m benchmarks fused_dense --config=xlnet_base [--rows=2,16] \
      [--tilings=32x256x4,16x256x8] [--calls=50] [--cold_bytes=1e8]

The parts of a layer that ``models.two_stream.Block.fused`` fuses, at the config's sizes and
compute dtype: ``qkv`` (LayerNorm, then the query, key and value projections), ``out`` (the
output projection and the residual add) and ``mlp_in`` (LayerNorm, matmul, bias, GELU). For
each part and each row count of ``--rows`` (at most ``fused_dense.MAX_ROWS``; 2: a sequential
call at batch 1), random inputs, and ``--calls`` calls of each variant under the profiler, each
call on the next of copies of the weights that fill ``--cold_bytes`` (so that they come from
memory, not from the L2 cache, as in a decoding call: with one copy the 2-row parts ran about
twice as fast as inside the model): ``xla`` (the part as jnp ops, as the unfused block writes
it, which XLA fuses as it can) and ``fused`` with each tiling of ``--tilings``
(``BNxBKxWARPS``; default: ``fused_dense.tiling``'s alone).

Metrics per (part, rows, variant): ``gpu_us_per_call`` (the kernels' durations summed, from the
trace), ``kernels_per_call``, ``bytes_per_call`` (the weights, the rows read and written, in
the compute dtype), ``tb_per_s`` (bytes over GPU time) and ``max_abs_error`` against the part
in float32. Without a GPU the GPU fields are null (the kernels run interpreted).
"""
from __future__ import annotations

import argparse
import functools
import math
import tempfile
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax.models import fused_dense
from benchmarks import cli, common, decode_profile, records, trace_summary

PARTS = ("qkv", "out", "mlp_in")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", default="xlnet_base", help="configs/ name")
  parser.add_argument("--rows", type=cli.list_of(int), default="2,16",
                      help="rows per call")
  parser.add_argument("--tilings", type=cli.list_of(str), default="",
                      help="BNxBKxWARPS each; default: fused_dense.tiling's")
  parser.add_argument("--calls", type=int, default=50, help="profiled calls per variant")
  parser.add_argument("--cold_bytes", type=float, default=1e8,
                      help="weights cycled through, in bytes (past the L2 cache: 50 MB on the "
                      "H100 and H200)")


def part_inputs(part: str, rows: int, width: int, d_ff: int, dtype: Any,
                seed: int = 0) -> dict[str, Any]:
  """Random arrays of a part: ``x_MxK``, ``kernels`` and (by part) ``norm`` (scale and bias),
  ``bias_N`` and ``residual_MxN``; :func:`keywords` makes them :func:`fused_dense.dense`'s.
  The norm and the bias are float32, as the model's parameters (only the matrices are cast to
  the compute dtype before a sampling loop)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape, scale=1.0, of=dtype: jnp.asarray(rng.normal(size=shape) * scale, of)
  depth, widths = {"qkv": (width, (width,) * 3), "out": (width, (width,)),
                   "mlp_in": (width, (d_ff,))}[part]
  made = {"x_MxK": normal(rows, depth),
          "kernels": [normal(depth, w, scale=depth ** -0.5) for w in widths]}
  if part in ("qkv", "mlp_in"):
    made["norm"] = (normal(depth, of=jnp.float32) + 1, normal(depth, of=jnp.float32))
  if part == "mlp_in":
    made["bias_N"] = normal(widths[0], of=jnp.float32)
  if part == "out":
    made["residual_MxN"] = normal(rows, widths[0])
  return made


def keywords(part: str, arrays: dict[str, Any]) -> dict[str, Any]:
  """:func:`part_inputs`' arrays as :func:`fused_dense.dense`'s keywords."""
  made = dict(arrays, gelu=part == "mlp_in")
  if "norm" in made:
    made["norm"] = fused_dense.Norm(*made["norm"], nn.LayerNorm.epsilon)
  return made


def unfused(x_MxK: Any, kernels: list[Any], norm: fused_dense.Norm | None = None,
            bias_N: Any = None, gelu: bool = False, residual_MxN: Any = None
            ) -> tuple[Any, ...]:
  """The part as the unfused block computes it (``nn.LayerNorm``, matmuls in the weights'
  dtype, the bias, GELU and residual add after them)."""
  dtype = kernels[0].dtype
  if norm is not None:
    params = {"params": {"scale": norm.scale_K, "bias": norm.bias_K}}
    x_MxK = nn.LayerNorm(epsilon=norm.epsilon, dtype=dtype).apply(params, x_MxK)
  outs = []
  for kernel in kernels:
    out = jnp.dot(x_MxK.astype(dtype), kernel.astype(dtype),
                  precision=jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None)
    if bias_N is not None:
      out = out + bias_N.astype(dtype)
    if gelu:
      out = nn.gelu(out)
    if residual_MxN is not None:
      out = residual_MxN.astype(dtype) + out
    outs.append(out)
  return tuple(outs)


def parse_tiling(text: str) -> fused_dense.Tiling:
  """``BNxBKxWARPS`` as a :class:`fused_dense.Tiling`."""
  return fused_dense.Tiling(*map(int, text.split("x")))


def gpu_time(fn: Callable[[int], Any], calls: int) -> tuple[float | None, float | None]:
  """``(GPU us, kernels)`` per call of ``fn(i)`` (compiled first), from calls ``i < calls``
  under the profiler; ``(None, None)`` without GPU kernels."""
  jax.block_until_ready(fn(0))
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      with jax.profiler.TraceAnnotation(decode_profile.WITHIN):
        for i in range(calls):
          out = fn(i)
        jax.block_until_ready(out)
    kernels = decode_profile.device_kernels(
        *trace_summary.load(trace_summary.perfetto_files(folder)[0]))
  metrics = decode_profile.kernel_metrics(kernels, calls, top=0)
  if metrics["gpu_ms_per_call"] is None:
    return None, None
  return 1e3 * metrics["gpu_ms_per_call"], metrics["kernels_per_call"]


def run(config: str = "xlnet_base", rows: list[int] = (2, 16),
        tilings: list[str] = (), calls: int = 50, cold_bytes: float = 1e8) -> Iterator[dict]:
  """One ``fused_dense`` record per (part, rows, variant), each yielded once measured."""
  model = common.config_of(config).model
  dtype = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[model.dtype]
  for part in PARTS:
    for num_rows in rows:
      arrays = part_inputs(part, num_rows, model.d_model, model.d_ff, dtype)
      exact = unfused(**keywords(part, jax.tree_util.tree_map(
          lambda a: a.astype(jnp.float32), arrays)))
      widths = [w.shape[1] for w in arrays["kernels"]]
      itemsize = jnp.dtype(dtype).itemsize
      weight_bytes = sum(w.size for w in arrays["kernels"]) * itemsize
      moved = weight_bytes + (arrays["x_MxK"].size + num_rows * sum(widths)
                              * (2 if "residual_MxN" in arrays else 1)) * itemsize
      copies = [dict(arrays, kernels=[w + i for w in arrays["kernels"]])
                for i in range(max(1, math.ceil(cold_bytes / weight_bytes)))]
      fused = [parse_tiling(t) for t in tilings] or [None]
      for variant, tiles in [("xla", None)] + [("fused", t) for t in fused]:
        impl = unfused if variant == "xla" else functools.partial(fused_dense.dense, tiles=tiles)
        fn = jax.jit(lambda a, impl=impl: impl(**keywords(part, a)))
        error = max(float(jnp.abs(g.astype(jnp.float32) - e).max())
                    for g, e in zip(fn(arrays), exact))
        us, kernels = gpu_time(lambda i: fn(copies[i % len(copies)]), calls)
        used = tiles or fused_dense.tiling(arrays["x_MxK"].shape[1], widths)
        yield records.make("fused_dense", {
            "part": part, "rows": num_rows, "variant": variant, "calls": calls,
            "weight_copies": len(copies),
            "tiling": None if variant == "xla" else "x".join(map(str, used))}, {
                "gpu_us_per_call": us, "kernels_per_call": kernels,
                "bytes_per_call": int(moved),
                "tb_per_s": None if us is None else moved / us / 1e6,
                "max_abs_error": error}, common.model_config(config))
