"""The dense layers of a decoding call, each with its neighbours in one kernel.

A decoding call moves few rows through a layer (a batch-1 sequential call two, a batch-1 tree
call 72), so each matmul reads a weight matrix to multiply a handful of rows, and XLA runs the
work around it as kernels of their own: LayerNorm's statistics, its normalisation, the bias
and GELU, the residual add, each a launch of about 1.4 us for almost no work (a third of a
batch-1 call on the H100: docs/results.md, "Where a batch-1 call's time goes, by model
scope"). :func:`dense` does a matmul's neighbours in the one kernel that reads its weights:

  out_i = residual + gelu(norm(x) @ w_i + bias)        (each part optional)

for one to three weights ``w_i`` of one input (a layer's query, key and value share a launch:
their column tiles lie side by side in one grid). ``norm`` is a LayerNorm with float32
statistics and ``nn.LayerNorm``'s variance ``E[x^2] - E[x]^2`` (clipped at 0); ``gelu`` is
``nn.gelu``'s tanh form. Everything after the matmul is computed in float32 from its float32
accumulator and rounded once, to the weights' dtype.

Each program computes one ``BM x BN`` output tile, ``BM`` the rows rounded up to a power of
two from 16: the rows past the call's are masked in every load and store, so no padded copy of
the input exists. A program issues the reads of all its weight rows (the whole depth, in
``BK``-row chunks: at most :data:`MAX_DEPTH`) before it uses any, so that they wait for memory
once; the statistics of a norm come from the same loaded input rows.

Forward only, for calls of at most :data:`MAX_ROWS` rows (``models.two_stream.Block.fused``); a
Pallas kernel lowered through Triton on GPUs, Pallas' interpreter elsewhere (the tests).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import struct
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from asarm_jax.models import attention

Array = jnp.ndarray
# One 16-row tile. With more rows XLA's GEMMs were faster (H100, 2026-12-06, at 9cda879: a
# 42-row MLP in 8.3-10.4 us against 7.4, 128 rows 14-33 against 10.7; benchmarks/fused_dense.py).
MAX_ROWS = 16
MAX_DEPTH = 1024  # a program holds all its weights' rows at once: 48 KB at 768 x 32 in bf16
_BLOCKS_N = (32, 16)  # the largest that divides every weight's width
_BLOCKS_K = (256, 128, 64, 32, 16)  # the largest that divides the depth
_GELU_C = math.sqrt(2.0 / math.pi)


class Tiling(NamedTuple):
  """A launch's tiles (``block_n`` output columns, read in chunks of ``block_k`` rows of the
  weights) and Triton's warps; :func:`tiling` gives the default."""
  block_n: int
  block_k: int
  num_warps: int = 4


@struct.dataclass
class Norm:
  """A LayerNorm of the input rows: ``scale_K``, ``bias_K`` and the variance's ``epsilon`` (a
  constant of the kernel, not an operand)."""
  scale_K: Array
  bias_K: Array
  epsilon: float = struct.field(pytree_node=False)


def supports(num_rows: int, depth: int, widths: Sequence[int]) -> bool:
  """Whether :func:`dense` takes ``num_rows`` rows of ``depth`` onto weights of ``widths``."""
  return (num_rows <= MAX_ROWS and depth <= MAX_DEPTH and any(depth % b == 0 for b in _BLOCKS_K)
          and any(all(w % b == 0 for w in widths) for b in _BLOCKS_N))


def tiling(depth: int, widths: Sequence[int]) -> Tiling:
  """The default tiling of weights of ``depth`` rows and ``widths`` columns (see
  :func:`supports`): the widest ``block_n`` and ``block_k`` of :data:`_BLOCKS_N` and
  :data:`_BLOCKS_K` that divide them."""
  return Tiling(next(b for b in _BLOCKS_N if all(w % b == 0 for w in widths)),
                next(b for b in _BLOCKS_K if depth % b == 0))


def dense(x_MxK: Array, kernels: Sequence[Array], *, norm: Norm | None = None,
          bias_N: Array | None = None, gelu: bool = False, residual_MxN: Array | None = None,
          tiles: Tiling | None = None) -> tuple[Array, ...]:
  """``residual + gelu(norm(x) @ w + bias)`` for each ``K x N_i`` weight of ``kernels``:
  ``M x N_i`` arrays in the weights' dtype. ``bias_N``, ``gelu`` and ``residual_MxN`` need a
  single weight; ``x`` is cast to the weights' dtype after the norm, float32 accumulation.
  ``tiles``: :func:`tiling`'s unless given (``benchmarks/fused_dense.py`` compares them)."""
  num_rows, depth = x_MxK.shape
  widths = tuple(w.shape[1] for w in kernels)
  if not supports(num_rows, depth, widths):
    raise ValueError(f"fused dense: {num_rows} rows of {depth} onto widths {widths} "
                     f"(at most {MAX_ROWS} rows of at most {MAX_DEPTH}; sizes multiples of 16)")
  if len(kernels) > 1 and (bias_N is not None or gelu or residual_MxN is not None):
    raise ValueError("fused dense: a bias, GELU or residual needs a single weight")
  tiles = tiles or tiling(depth, widths)
  if depth % tiles.block_k or any(w % tiles.block_n for w in widths):
    raise ValueError(f"fused dense: {tiles} does not divide {depth} x {widths}")
  counts = tuple(w // tiles.block_n for w in widths)
  dtype = kernels[0].dtype
  operands = [x_MxK]
  if norm is not None:
    operands += [norm.scale_K.astype(jnp.float32), norm.bias_K.astype(jnp.float32)]
  operands += list(kernels)
  if bias_N is not None:
    operands.append(bias_N.astype(jnp.float32))
  if residual_MxN is not None:
    operands.append(residual_MxN)
  compiler_params = None
  if not attention.interpreted():
    compiler_params = plgpu.CompilerParams(num_warps=tiles.num_warps, num_stages=1)
  kernel = functools.partial(
      _kernel, num_rows=num_rows, block_m=max(16, 1 << (num_rows - 1).bit_length()),
      block_n=tiles.block_n, block_k=tiles.block_k, tiles=counts,
      epsilon=None if norm is None else norm.epsilon, has_bias=bias_N is not None, gelu=gelu,
      has_residual=residual_MxN is not None)
  return tuple(pl.pallas_call(
      kernel, grid=(sum(counts),), name="fused_dense",
      out_shape=[jax.ShapeDtypeStruct((num_rows, w), dtype) for w in widths],
      interpret=attention.interpreted(), compiler_params=compiler_params)(*operands))


def _kernel(*refs, num_rows: int, block_m: int, block_n: int, block_k: int,
            tiles: tuple[int, ...], epsilon: float | None, has_bias: bool, gelu: bool,
            has_residual: bool):
  """One ``block_m x block_n`` output tile of the weight whose column tiles hold this
  program's (``tiles``: each weight's count, in order). Every chunk of the tile's weights is
  loaded before any is used, so that their reads from memory overlap: one latency a program,
  not one a chunk (a loop, or chunks loaded as used, waited for each)."""
  refs = list(refs)
  x_ref = refs.pop(0)
  scale_ref, shift_ref = (refs.pop(0), refs.pop(0)) if epsilon is not None else (None, None)
  w_refs = [refs.pop(0) for _ in tiles]
  bias_ref = refs.pop(0) if has_bias else None
  residual_ref = refs.pop(0) if has_residual else None
  out_refs = refs
  depth = x_ref.shape[1]
  chunks = [pl.ds(i * block_k, block_k) for i in range(depth // block_k)]
  rows_ok = (jnp.arange(block_m) < num_rows)[:, None]
  rows = pl.ds(0, block_m)

  def tile(w_ref, out_ref, first_column):
    columns = pl.ds(first_column, block_n)
    w_chunks = [w_ref[chunk, columns] for chunk in chunks]
    # Rows past the call's read as 0 (their statistics finite, their results never stored).
    x_chunks = [plgpu.load(x_ref.at[rows, chunk], mask=rows_ok, other=0).astype(jnp.float32)
                for chunk in chunks]
    if epsilon is not None:
      mean = sum(jnp.sum(x, axis=1) for x in x_chunks) / depth
      square = sum(jnp.sum(x * x, axis=1) for x in x_chunks) / depth
      inverse = jax.lax.rsqrt(jnp.maximum(0.0, square - mean * mean) + epsilon)
      x_chunks = [(x - mean[:, None]) * (inverse[:, None] * scale_ref[chunk]) + shift_ref[chunk]
                  for x, chunk in zip(x_chunks, chunks)]
    precision = jax.lax.Precision.HIGHEST if w_chunks[0].dtype == jnp.float32 else None
    out = sum(jax.lax.dot_general(x.astype(w.dtype), w, (((1,), (0,)), ((), ())),
                                  precision=precision, preferred_element_type=jnp.float32)
              for x, w in zip(x_chunks, w_chunks))
    if bias_ref is not None:
      out += bias_ref[columns]
    if gelu:
      out = 0.5 * out * (1.0 + jnp.tanh(_GELU_C * (out + 0.044715 * out * out * out)))
    if residual_ref is not None:
      out += plgpu.load(residual_ref.at[rows, columns], mask=rows_ok,
                        other=0).astype(jnp.float32)
    plgpu.store(out_ref.at[rows, columns], out.astype(out_ref.dtype), mask=rows_ok)

  program = pl.program_id(0)
  start = 0
  for w_ref, out_ref, count in zip(w_refs, out_refs, tiles):
    @pl.when((program >= start) & (program < start + count))
    def _(w_ref=w_ref, out_ref=out_ref, start=start):
      tile(w_ref, out_ref, (program - start) * block_n)
    start += count
