"""A batch-invariant matmul: a row's result never depends on how many rows share the call.

cuBLAS and XLA's GEMM fusions choose their tiling, split-K and reduction order per shape,
so in bf16 a row of ``x @ w`` can round differently at batch 1 and at batch 64, or with 2 and
with 20 rows per call. This kernel (Pallas, lowered through Triton on GPUs; Pallas'
interpreter elsewhere) has one tiling per weight matrix: every ``BLOCK_M x BN`` output tile
sums each fixed split of ``K`` in ``BK``-chunks in order, accumulating in float32, the splits'
partial sums are added in split order, and rows of a tile never interact. ``BN``, ``BK`` and
the splits depend on the weight's shape only, ``BLOCK_M`` is fixed and the rows are padded to
whole tiles, so each output row is computed by the same instructions in the same order
whatever ``M`` is (split-K is fine; a split *chosen per shape*, as cuBLAS does, is not). The
splits let a call of a few rows fill the device: one split over all of ``K = 3072`` would be
48 chunks in a row on 6 programs.

XLA's own reductions may choose their order per shape too (on the H200, with only the matmuls
and attention fixed, the 110M model's rows still decoded differently at batch 1 and 64), so
every float sum a decoded row depends on goes through :func:`row_sum`, this kernel against a
column of ones: LayerNorm's statistics and the log-softmax's normaliser. With the fused
attention kernel (fixed ``64 x 64`` blocks, keys met in rank order, tree calls included:
``masks.Tail``) and row-wise elementwise ops, that makes the two-stream network
batch-invariant (``models.batch_invariant``; docs/sampling.md, "Deterministic decoding").
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from asarm_jax.models import attention

Array = jnp.ndarray
BLOCK_M = 64
_BLOCKS_N = (64, 32, 16)  # the largest that divides N
_BLOCKS_K = (64, 32, 16)  # the largest that divides K
_CHUNKS_PER_SPLIT = 4  # K is cut into splits of 4 chunks where it divides ...
_SPLIT_BELOW_TILES = 64  # ... for weights of fewer column tiles (the head's fill the device)
_IN_TURN_FROM_TILES = 128  # output tiles from which a program adds the splits itself


def _block(size: int, choices: tuple[int, ...], name: str) -> int:
  for block in choices:
    if size % block == 0:
      return block
  raise ValueError(f"batch-invariant matmul: {name}={size} is not a multiple of "
                   f"{choices[-1]} (every weight dimension must be, e.g. d_model, d_ff, the "
                   "heads' width and the vocabulary).")


def _kernel(x_ref, w_ref, out_ref, *, block_k: int, num_k: int, num_splits: int,
            transposed: bool):
  """An output tile over ``num_splits`` splits of ``x_ref``'s columns (one, when the splits
  run side by side): each split's ``num_k`` chunks summed in order from zero, then the splits'
  sums added in order."""
  precision = jax.lax.Precision.HIGHEST if x_ref.dtype == jnp.float32 else None
  contract = (((1,), (1 if transposed else 0,)), ((), ()))

  def split_sum(split):
    def body(i, acc_MxN):
      chunk = pl.ds((split * num_k + i) * block_k, block_k)
      w_tile = w_ref[:, chunk] if transposed else w_ref[chunk, :]
      return acc_MxN + jax.lax.dot_general(x_ref[:, chunk], w_tile, contract,
                                           precision=precision,
                                           preferred_element_type=jnp.float32)
    return jax.lax.fori_loop(0, num_k, body, jnp.zeros(out_ref.shape, jnp.float32))

  out_ref[...] = jax.lax.fori_loop(1, num_splits, lambda split, total: total + split_sum(split),
                                   split_sum(0))


def matmul(x_MxK: Array, w: Array, out_dtype: Any, transposed: bool = False) -> Array:
  """``x @ w`` (``w`` is ``K x N``, or ``N x K`` with ``transposed``), ``M x N`` in
  ``out_dtype``, float32 accumulation; row ``m`` of the result depends on row ``m`` of ``x``
  and on ``w`` only, bit for bit.

  ``K`` is cut into fixed splits (a function of the weight's shape alone), each summed in
  float32 and the sums added in split order. For a call of few output tiles the splits run
  side by side, so that it still fills the device, and XLA adds their partial sums; from
  ``_IN_TURN_FROM_TILES`` tiles (e.g. a tree call at batch 64) a program adds them itself, the
  same additions in the same order without writing and reading ``splits x M x N`` floats. A
  weight of many column tiles (the head) is not split.
  """
  num_rows, depth = x_MxK.shape
  width = w.shape[0] if transposed else w.shape[1]
  block_n = _block(width, _BLOCKS_N, "N")
  block_k = _block(depth, _BLOCKS_K, "K")
  split = block_k * _CHUNKS_PER_SPLIT
  if depth % split or width // block_n >= _SPLIT_BELOW_TILES:
    split = depth
  padded = -(-num_rows // BLOCK_M) * BLOCK_M
  x_MxK = jnp.pad(x_MxK.astype(w.dtype), ((0, padded - num_rows), (0, 0)))
  in_turn = (padded // BLOCK_M) * (width // block_n) >= _IN_TURN_FROM_TILES
  block = depth if in_turn else split  # a program's columns of x (rows of w)
  w_spec = (pl.BlockSpec((block_n, block), lambda i, j, s: (j, s)) if transposed else
            pl.BlockSpec((block, block_n), lambda i, j, s: (s, j)))
  compiler_params = None
  if not attention.interpreted():
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
    compiler_params = plgpu.CompilerParams(num_warps=4, num_stages=3)
  partial_SxMxN = pl.pallas_call(
      functools.partial(_kernel, block_k=block_k, num_k=split // block_k,
                        num_splits=block // split, transposed=transposed),
      grid=(padded // BLOCK_M, width // block_n, depth // block),
      in_specs=[pl.BlockSpec((BLOCK_M, block), lambda i, j, s: (i, s)), w_spec],
      out_specs=pl.BlockSpec((None, BLOCK_M, block_n), lambda i, j, s: (s, i, j)),
      out_shape=jax.ShapeDtypeStruct((depth // block, padded, width), jnp.float32),
      interpret=attention.interpreted(), compiler_params=compiler_params)(x_MxK, w)
  out_MxN = functools.reduce(lambda total, part: total + part, list(partial_SxMxN))
  return out_MxN[:num_rows].astype(out_dtype)


def row_sum(x_MxK: Array) -> Array:
  """Float32 sums of the rows, ``M``: the kernel's fixed-order sum against a column of ones
  (``K`` a multiple of 16); a row's sum never depends on ``M``."""
  ones_KxN = jnp.ones((x_MxK.shape[1], _BLOCKS_N[-1]), jnp.float32)
  return matmul(x_MxK.astype(jnp.float32), ones_KxN, jnp.float32)[:, 0]


def dot_general(lhs: Array, rhs: Array, dimension_numbers: Any,
                precision: Any = None, preferred_element_type: Any = None) -> Array:
  """:func:`jax.lax.dot_general` for the contractions of ``nn.Dense`` and ``nn.DenseGeneral``
  (the trailing axes of ``lhs`` with the leading axes of ``rhs``, no batch axes), through
  :func:`matmul`; pass it as their ``dot_general``. ``precision`` is ignored: float32 operands
  are multiplied in full precision."""
  del precision
  (lhs_contract, rhs_contract), batch_dims = dimension_numbers
  num = len(lhs_contract)
  if (any(batch_dims) or tuple(lhs_contract) != tuple(range(lhs.ndim - num, lhs.ndim))
      or tuple(rhs_contract) != tuple(range(num))):
    raise ValueError(f"batch-invariant matmul: unsupported dimension_numbers "
                     f"{dimension_numbers} (a Dense's contraction only).")
  out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
  depth = math.prod(rhs.shape[:num])
  out = matmul(lhs.reshape(-1, depth), rhs.reshape(depth, -1), out_dtype)
  return out.reshape(lhs.shape[:lhs.ndim - num] + rhs.shape[num:])


def attend_embedding(query_BxKxD: Array, embedding_VxD: Array) -> Array:
  """``query @ embedding.T`` (a tied head's logits, ``B x K x V``) without transposing the
  table."""
  out = matmul(query_BxKxD.reshape(-1, query_BxKxD.shape[-1]), embedding_VxD,
               jnp.result_type(query_BxKxD, embedding_VxD), transposed=True)
  return out.reshape(query_BxKxD.shape[:-1] + embedding_VxD.shape[:1])

