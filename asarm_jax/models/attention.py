"""Masked softmax attention with an attention sink and ALiBi, from a structured mask.

One function, :func:`attend`, for both architectures' two-stream attention. The mask is a
:class:`asarm_jax.masks.Visibility`: per-row rank limits, per-key ranks and, for tree calls,
node bitsets. Implementations (``model.attention_impl``):

* ``"pallas"``: a fused flash-attention kernel (Pallas, lowered through Triton on GPUs). It
  derives every score's visibility and its ALiBi term from the per-row and per-key integers, so
  no ``B x T x S`` mask or bias ever exists; key blocks that no row of a query block can see
  are skipped (about half of them under the prefix-LM and causal rules), the loops running
  over two runs of blocks some row sees, without a branch (:func:`_runs`). The sink is the
  initial state of the online softmax. A call of at most 128 rows gets query tiles of as few
  rows as hold them (16 for a decoding call's one or two, not 64; 128 for a tree call's 72,
  which then reads the keys once, not twice), and a call of too few query tiles to fill the
  GPU (decoding at batch 1) splits its key blocks among more programs and combines their
  states (flash-decoding); neither in batch-invariant mode, where a row must not depend on
  the call's shape. Off GPUs it runs in Pallas' interpreter (tests).
* ``"xla"``: the reference: a dense mask and bias, ``jax.nn.dot_product_attention``.
* ``"cudnn"``: the same dense form through cuDNN's fused kernel (kept for the side-by-side
  benchmark against the kernel above, ``benchmarks/train_throughput.py``).

All three compute ``softmax(q.k / sqrt(H) - slope_h |p_q - p_k|)`` over the visible keys plus
the sink (a key/value every row sees, with no ALiBi term), with fixed slopes
``2^(-8 (h+1) / N)`` (Press et al. 2022).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Iterator

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jax.sharding import PartitionSpec as P

from asarm_jax import masks

Array = jnp.ndarray
IMPLEMENTATIONS = ("pallas", "xla", "cudnn")
_LOG2E = math.log2(math.e)
_MASKED = -1e30  # a score no row keeps (every row has the sink, a finite score)


def alibi_slopes(num_heads: int) -> Array:
  """ALiBi slopes ``2^(-8 (h+1) / N)``, float32 ``N``."""
  return 2.0 ** (-8.0 * (jnp.arange(num_heads, dtype=jnp.float32) + 1) / num_heads)


def alibi_bias(query_positions_BxT: Array, key_positions_BxS: Array, num_heads: int) -> Array:
  """``-slope_h * |p_q - p_k|``, float32 ``B x N x T x S`` (the dense form)."""
  with jax.named_scope("alibi"):  # a scope for profiles (benchmarks/profile_step.py)
    distance = jnp.abs(query_positions_BxT[:, :, None] - key_positions_BxS[:, None, :])
    return -alibi_slopes(num_heads)[None, :, None, None] * distance[:, None].astype(jnp.float32)


def attend(q_BxTxNxH: Array, k_BxSxNxH: Array, v_BxSxNxH: Array, sink_key_NxH: Array,
           sink_value_NxH: Array, visibility: masks.Visibility, query_positions_BxT: Array,
           key_positions_BxS: Array, alibi: bool, implementation: str,
           batch_invariant: bool = False) -> Array:
  """Attention of ``T`` rows onto ``S`` keys plus the sink, ``B x T x N x H`` (q's dtype).

  ``batch_invariant`` (the fused kernel): a row's result never depends on the call's shape.
  Otherwise the kernel cuts its work to the call: query tiles of as few rows as hold it (from
  16), and a call of few tiles splits its keys among more programs.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; "
                     f"expected one of {IMPLEMENTATIONS}")
  with jax.named_scope("attend"):
    if implementation == "pallas" and visibility.tail is not None:
      return _flash_tail(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, sink_key_NxH, sink_value_NxH,
                         visibility, query_positions_BxT, key_positions_BxS, alibi)
    if implementation == "pallas":
      return _flash(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, sink_key_NxH, sink_value_NxH, visibility,
                    query_positions_BxT, key_positions_BxS, alibi, not batch_invariant)
    return _dense(q_BxTxNxH, k_BxSxNxH, v_BxSxNxH, sink_key_NxH, sink_value_NxH, visibility,
                  query_positions_BxT, key_positions_BxS, alibi, implementation)


def _pad_to(x, axis, multiple, value=0):
  """``x`` padded with ``value`` at the end of ``axis`` to a multiple of ``multiple``."""
  n = (-x.shape[axis]) % multiple
  return jnp.pad(x, [(0, n if a == axis else 0) for a in range(x.ndim)], constant_values=value)


def _dense(q, k, v, sink_key, sink_value, visibility, query_positions, key_positions, alibi,
           implementation):
  """The reference: the sink as slot 0, a dense mask and bias, ``dot_product_attention``.

  cuDNN's kernel wants even ``T`` and ``S`` with a bias, so rows and slots are padded there
  (padded slots masked out, padded rows dropped).
  """
  batch, num_rows, num_heads, _ = q.shape
  with_sink = lambda x, s: jnp.concatenate(
      [jnp.broadcast_to(s.astype(q.dtype), (batch, 1) + s.shape), x.astype(q.dtype)], 1)
  k, v = with_sink(k, sink_key), with_sink(v, sink_value)
  mask = jnp.pad(masks.dense(visibility), ((0, 0), (0, 0), (1, 0)), constant_values=True)
  bias = None
  if alibi:  # the sink slot gets no bias
    bias = jnp.pad(alibi_bias(query_positions, key_positions, num_heads),
                   ((0, 0), (0, 0), (0, 0), (1, 0))).astype(q.dtype)
  if implementation == "cudnn":
    q, k, v = _pad_to(q, 1, 2), _pad_to(k, 1, 8), _pad_to(v, 1, 8)
    mask = _pad_to(_pad_to(mask, 1, 2), 2, 8)  # padded slots: False
    if bias is not None:
      bias = _pad_to(_pad_to(bias, 2, 2), 3, 8)
  out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask[:, None],
                                     implementation=implementation)
  return out[:, :num_rows]


# ------------------------------------------------------------------------------------------
# The fused kernel. Scores are kept in the log2 domain (exp2 is the fast exponential).

BLOCK_Q, BLOCK_K = 64, 64
_FULL_GRID = 128  # programs that fill a GPU; a smaller grid may split its keys


def _query_block(num_rows: int, by_shape: bool) -> int:
  """Rows per query tile: ``BLOCK_Q``, or (``by_shape``) for a call of at most ``2 BLOCK_Q``
  rows the least power of two from 16 that holds them: a decoding call's one or two rows pad
  to 16, not 64, and a tree call's 65 to 128 rows (72 for N=8, D=6) read each key block once,
  not twice. The same for the padded rows, so the backward pass recomputes it."""
  if not by_shape or num_rows > 2 * BLOCK_Q:
    return BLOCK_Q
  return max(16, 1 << (num_rows - 1).bit_length())


def _compiler_params(block_q: int):
  """Triton's settings: 8 warps for the 128-row tiles (twice the accumulator), else 4."""
  return plgpu.CompilerParams(num_warps=8 if block_q > BLOCK_Q else 4, num_stages=2)


_GPU_TARGET = contextvars.ContextVar("gpu_target", default=False)


@contextlib.contextmanager
def gpu_target() -> Iterator[None]:
  """Within it the kernels are traced for a GPU whatever this process's backend: for a program
  compiled for a GPU that is not attached (``benchmarks/compiled_kernels.py``)."""
  token = _GPU_TARGET.set(True)
  try:
    yield
  finally:
    _GPU_TARGET.reset(token)


def interpreted() -> bool:
  """Whether the Pallas kernels (this module's and the batch-invariant matmul's) run in Pallas'
  interpreter: off GPUs (the tests), unless within :func:`gpu_target`."""
  return jax.default_backend() != "gpu" and not _GPU_TARGET.get()


def _load(ref, rows_ok):
  """The block of ``ref``, its rows past the call's (``rows_ok`` false: a tile partly filled)
  read as 0 without touching memory; ``rows_ok`` None: every row is the call's."""
  if rows_ok is None:
    return ref[...]
  mask = rows_ok.reshape(rows_ok.shape + (1,) * (len(ref.shape) - 1))
  return plgpu.load(ref, mask=mask, other=0)


def _store(ref, value, rows_ok):
  """``ref[...] = value`` for the call's rows (see :func:`_load`)."""
  if rows_ok is None:
    ref[...] = value
  else:
    plgpu.store(ref, value, mask=rows_ok.reshape(rows_ok.shape + (1,) * (value.ndim - 1)))


class _Rows:
  """One block of rows (query tile), loaded once per program; rows past the call's
  (``rows_ok``) read limit 0: they see the sink only."""

  def __init__(self, limit_ref, position_ref, word0_ref, word1_ref, rows_ok=None):
    self.limit = _load(limit_ref, rows_ok)
    self.position = _load(position_ref, rows_ok)
    self.words = (None if word0_ref is None else
                  (_load(word0_ref, rows_ok), _load(word1_ref, rows_ok)))
    # Does any row of the tile see any key by rank / by tree node?
    self.max_limit = jnp.max(self.limit)
    self.any_node = (None if self.words is None else
                     jnp.max(((self.words[0] | self.words[1]) != 0).astype(jnp.int32)) > 0)


def _tile_visible(rows: _Rows, key_rank, key_node):
  """bool ``BQ x BK``: which scores of the tile are visible."""
  visible = key_rank[None, :] < rows.limit[:, None]
  if rows.words is not None:
    visible |= masks.sees_node(rows.words[0][:, None], rows.words[1][:, None], key_node[None, :])
  return visible


def _block_needed(rows: _Rows, key_rank, key_node):
  """Can any row of the tile see any key of the block (a cheap, conservative test)."""
  needed = jnp.min(key_rank) < rows.max_limit
  if rows.words is not None:
    needed |= rows.any_node & (jnp.max(key_node) >= 0)
  return needed


def _runs(needed: list[Array]) -> list[tuple[Array, Array]]:
  """Two runs of indices ``[start, stop)`` that hold every index whose ``needed`` (a scalar
  bool each) is true: the first unbroken run of needed indices, and from the next needed one
  to the last (either may be empty). The kernels loop over the runs of key (or query) blocks
  some row sees, without a branch, so that Triton fetches the next block while one is
  computed; a block inside the second run that no row sees is computed fully masked, which
  leaves the online softmax's state and the gradients as they were, bit for bit (its weights
  are ``exp2(-1e30 - max) = 0``). A tree call's cache is seen as two runs: the filled slots
  from the first, and the tree's slots at its end."""
  n = len(needed)
  a0 = a1 = b0 = b1 = jnp.int32(n)
  for j, need in enumerate(needed):
    opens = need & (a0 == n)
    extends = need & (a0 < n) & (a1 == j)
    later = need & (a0 < n) & (a1 < j)
    a0 = jnp.where(opens, jnp.int32(j), a0)
    a1 = jnp.where(opens | extends, jnp.int32(j + 1), a1)
    b0 = jnp.where(later & (b0 == n), jnp.int32(j), b0)
    b1 = jnp.where(later, jnp.int32(j + 1), b1)
  return [(a0, a1), (b0, b1)]


def _loop_runs(needed: list[Array], body, carry):
  """``body(j, carry)`` for each index ``j`` of :func:`_runs` of ``needed``, in order."""
  for start, stop in _runs(needed):
    carry = jax.lax.fori_loop(start, stop, body, carry)
  return carry


def _key_blocks_needed(rows: _Rows, key_rank_ref, key_node_ref, start, num_blocks: int):
  """Whether some row of the tile sees each key block ``start + j``, ``j < num_blocks`` (small
  loads, independent: issued together)."""
  needed = []
  for j in range(num_blocks):
    keys = pl.ds((start + j) * BLOCK_K, BLOCK_K)
    key_node = None if key_node_ref is None else key_node_ref[keys]
    needed.append(_block_needed(rows, key_rank_ref[keys], key_node))
  return needed


def _dot(a, b, trans_a: bool = False, trans_b: bool = False):
  """``a @ b`` (optionally transposed operands) with float32 accumulation; float32 operands
  are multiplied in full precision (not TF32)."""
  dims = (((0,) if trans_a else (1,)), ((1,) if trans_b else (0,)))
  precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return jax.lax.dot_general(a, b, (dims, ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)


def _scores(q, k, rows: _Rows, key_position, slope, scale):
  """Log2-domain scores ``BQ x BK`` (float32), ALiBi included."""
  s = _dot(q, k, trans_b=True) * (scale * _LOG2E)
  if slope is not None:
    distance = jnp.abs(rows.position[:, None] - key_position[None, :]).astype(jnp.float32)
    s -= (slope * _LOG2E) * distance
  return s


def _slope(alibi: bool, slope_ref):
  """The head's ALiBi slope (an input, not ``program_id``: under ``shard_map`` a device holds
  only some of the heads)."""
  return jnp.max(slope_ref[...]) if alibi else None


def _unpack(refs, tree):
  """Splits the kernel's input refs (tree refs are absent without a tree)."""
  refs = list(refs)
  take = lambda n: [refs.pop(0) for _ in range(n)]
  q, k, v, sink_key, sink_value, slope = take(6)
  limit, position = take(2)
  words = take(2) if tree else (None, None)
  key_rank, key_position = take(2)
  key_node = take(1)[0] if tree else None
  return (q, k, v, sink_key, sink_value, slope, limit, position, words, key_rank, key_position,
          key_node, refs)


def _online_step(carry, q, k, v, rows: _Rows, key_rank, key_node, key_position, slope, scale):
  """The online softmax's state ``(accumulator, max, sum)`` after one key block."""
  acc, m, total = carry
  s = _scores(q, k, rows, key_position, slope, scale)
  s = jnp.where(_tile_visible(rows, key_rank, key_node), s, _MASKED)
  m_next = jnp.maximum(m, jnp.max(s, 1))
  p = jnp.exp2(s - m_next[:, None])
  correction = jnp.exp2(m - m_next)
  acc = acc * correction[:, None] + _dot(p.astype(v.dtype), v)
  return acc, m_next, total * correction + jnp.sum(p, 1)


def _forward_kernel(*refs, num_key_blocks, scale, alibi, tree, to_state, splits=1,
                    num_rows=None, block_q=BLOCK_Q):
  """The online softmax over ``num_key_blocks`` key blocks in slot order, from the sink (max =
  its score, sum = 1, accumulator = its value) to the output and log-sum-exp or, ``to_state``,
  to the state ``(accumulator, max, sum)`` (:func:`_tail_kernel` goes on from it). With
  ``splits``, the grid's last axis runs ``splits`` programs per query tile, the ``s``-th over
  the ``s``-th run of ``num_key_blocks`` blocks (the sink's weight and value in the first
  only), each writing its state. ``num_rows``: the call's rows, if not a multiple of
  ``block_q`` (a tile's rows past them are masked: no padded copy of the rows exists)."""
  (q_ref, k_ref, v_ref, sink_key_ref, sink_value_ref, slope_ref, limit_ref, position_ref, words,
   key_rank_ref, key_position_ref, key_node_ref, outputs) = _unpack(refs, tree)
  rows_ok = None
  if num_rows is not None:
    rows_ok = (pl.program_id(2) // splits) * block_q + jnp.arange(block_q) < num_rows
  rows = _Rows(limit_ref, position_ref, *words, rows_ok)
  q = _load(q_ref, rows_ok)
  slope = _slope(alibi, slope_ref)
  split = pl.program_id(2) % splits if splits > 1 else 0
  m = _sink_scores(q, sink_key_ref[...], scale)
  sink_weight = 1.0 if splits == 1 else (split == 0).astype(jnp.float32)
  total = jnp.full_like(m, sink_weight)
  acc = jnp.broadcast_to(sink_value_ref[...].astype(jnp.float32)[None, :] * sink_weight, q.shape)

  start = split * num_key_blocks

  def body(j, carry):
    keys = pl.ds((start + j) * BLOCK_K, BLOCK_K)
    key_node = None if key_node_ref is None else key_node_ref[keys]
    return _online_step(carry, q, k_ref[keys, :], v_ref[keys, :], rows, key_rank_ref[keys],
                        key_node, key_position_ref[keys], slope, scale)

  acc, m, total = _loop_runs(
      _key_blocks_needed(rows, key_rank_ref, key_node_ref, start, num_key_blocks), body,
      (acc, m, total))
  if to_state:
    for ref, value in zip(outputs, (acc, m, total)):
      _store(ref, value, rows_ok)
  else:
    _store(outputs[0], (acc / total[:, None]).astype(outputs[0].dtype), rows_ok)
    _store(outputs[1], m + jnp.log2(total), rows_ok)


def _tail_kernel(q_ref, k_ref, v_ref, slope_ref, group_row_ref, limit_ref, position_ref,
                 slot_ref, key_rank_ref, key_position_ref, acc_ref, max_ref, sum_ref, out_ref, *,
                 num_key_blocks, scale, alibi):
  """A tree call's second pass (:func:`_flash_tail`), one row group of a batch row and one
  head: the group's rows and their online-softmax states are gathered from the batch row's by
  index, its tail's keys and values from the batch row's cache by slot, and the state goes on
  over those ``num_key_blocks`` blocks to the rows' output. (Gathered here, not by XLA: XLA's
  copies of the tails are ``B G W N H`` elements a tensor a layer, 113 MB at batch 64 with 8
  nodes, written and read again.)"""
  index = group_row_ref[...]
  rows = _Rows(limit_ref, position_ref, None, None)
  q = q_ref[index, :]
  slope = _slope(alibi, slope_ref)

  def body(j, carry):
    keys = pl.ds(j * BLOCK_K, BLOCK_K)
    key_rank, slots = key_rank_ref[keys], slot_ref[keys]
    return jax.lax.cond(
        _block_needed(rows, key_rank, None),
        lambda c: _online_step(c, q, k_ref[slots, :], v_ref[slots, :], rows, key_rank, None,
                               key_position_ref[keys], slope, scale),
        lambda c: c, carry)

  acc, _, total = jax.lax.fori_loop(
      0, num_key_blocks, body, (acc_ref[index, :], max_ref[index], sum_ref[index]))
  out_ref[...] = (acc / total[:, None]).astype(out_ref.dtype)


def _sink_scores(q, sink_key, scale):
  """Log2-domain scores ``BQ`` of the rows against the sink's key (float32)."""
  return jnp.sum(q.astype(jnp.float32) * sink_key.astype(jnp.float32)[None, :], 1) * (
      scale * _LOG2E)


def _dq_kernel(*refs, num_key_blocks, scale, alibi, tree):
  """The tile's query gradient, and what the key-gradient kernel and the sink's gradient need
  of its rows: ``delta = rowsum(dO * O)`` (``BQ``) and the tile's shares of the sink's key and
  value gradients (``H`` each), from the sink's weight ``exp2(score - lse)``."""
  (q_ref, k_ref, v_ref, sink_key_ref, sink_value_ref, slope_ref, limit_ref, position_ref, words,
   key_rank_ref, key_position_ref, key_node_ref,
   (out_ref, dout_ref, lse_ref, dq_ref, delta_ref, d_sink_key_ref, d_sink_value_ref)) = _unpack(
       refs, tree)
  rows = _Rows(limit_ref, position_ref, *words)
  q, dout = q_ref[...], dout_ref[...]
  lse = lse_ref[...]
  slope = _slope(alibi, slope_ref)
  f32 = lambda x: x.astype(jnp.float32)
  delta = jnp.sum(f32(out_ref[...]) * f32(dout), 1)
  sink_key = f32(sink_key_ref[...])
  p_sink = jnp.exp2(_sink_scores(q, sink_key, scale) - lse)
  ds_sink = p_sink * (jnp.sum(f32(dout) * f32(sink_value_ref[...])[None, :], 1) - delta)

  def body(j, dq):
    keys = pl.ds(j * BLOCK_K, BLOCK_K)
    key_node = None if key_node_ref is None else key_node_ref[keys]
    k = k_ref[keys, :]
    s = _scores(q, k, rows, key_position_ref[keys], slope, scale)
    p = jnp.where(_tile_visible(rows, key_rank_ref[keys], key_node),
                  jnp.exp2(s - lse[:, None]), 0.0)
    dp = _dot(dout, v_ref[keys, :], trans_b=True)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k)

  dq = _loop_runs(_key_blocks_needed(rows, key_rank_ref, key_node_ref, 0, num_key_blocks),
                  body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = ((dq + ds_sink[:, None] * sink_key[None, :]) * scale).astype(dq_ref.dtype)
  delta_ref[...] = delta
  d_sink_key_ref[...] = jnp.sum(ds_sink[:, None] * f32(q), 0) * scale
  d_sink_value_ref[...] = jnp.sum(p_sink[:, None] * f32(dout), 0)


def _dkv_kernel(*refs, num_query_blocks, block_q, scale, alibi, tree):
  (q_ref, k_ref, v_ref, _, _, slope_ref, limit_ref, position_ref, words, key_rank_ref,
   key_position_ref, key_node_ref, (dout_ref, lse_ref, delta_ref, dk_ref, dv_ref)) = _unpack(refs,
                                                                                             tree)
  k, v = k_ref[...], v_ref[...]
  key_rank, key_position = key_rank_ref[...], key_position_ref[...]
  key_node = None if key_node_ref is None else key_node_ref[...]
  slope = _slope(alibi, slope_ref)

  def tile(i):
    rows_slice = pl.ds(i * block_q, block_q)
    return rows_slice, _Rows(limit_ref.at[rows_slice], position_ref.at[rows_slice],
                             *(None, None) if words[0] is None else
                             (words[0].at[rows_slice], words[1].at[rows_slice]))

  def body(i, carry):
    rows_slice, rows = tile(i)
    dk, dv = carry
    q, dout = q_ref[rows_slice, :], dout_ref[rows_slice, :]
    s = _scores(q, k, rows, key_position, slope, scale)
    p = jnp.where(_tile_visible(rows, key_rank, key_node),
                  jnp.exp2(s - lse_ref[rows_slice][:, None]), 0.0)
    dv = dv + _dot(p.astype(dout.dtype), dout, trans_a=True)
    dp = _dot(dout, v, trans_b=True)
    ds = p * (dp - delta_ref[rows_slice][:, None])
    return dk + _dot(ds.astype(q.dtype), q, trans_a=True), dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = _loop_runs([_block_needed(tile(i)[1], key_rank, key_node)
                       for i in range(num_query_blocks)], body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _specs(batch, num_rows, num_keys, head_dim, tree, grid_over_keys, splits=1,
           block_q=BLOCK_Q):
  """BlockSpecs of the kernels' common inputs; the grid is ``(B, N, row or key blocks)``, or
  ``(B, N, row blocks x splits)`` with ``splits`` programs per block of ``block_q`` rows."""
  if grid_over_keys:
    row_tile = lambda: pl.BlockSpec((None, num_rows, None, head_dim), lambda b, h, j: (b, 0, h, 0))
    key_tile = lambda: pl.BlockSpec((None, BLOCK_K, None, head_dim), lambda b, h, j: (b, j, h, 0))
    row_vec = lambda: pl.BlockSpec((None, num_rows), lambda b, h, j: (b, 0))
    key_vec = lambda: pl.BlockSpec((None, BLOCK_K), lambda b, h, j: (b, j))
  else:
    row_tile = lambda: pl.BlockSpec((None, block_q, None, head_dim),
                                    lambda b, h, i: (b, i // splits, h, 0))
    key_tile = lambda: pl.BlockSpec((None, num_keys, None, head_dim),
                                    lambda b, h, i: (b, 0, h, 0))
    row_vec = lambda: pl.BlockSpec((None, block_q), lambda b, h, i: (b, i // splits))
    key_vec = lambda: pl.BlockSpec((None, num_keys), lambda b, h, i: (b, 0))
  head_vec = lambda: pl.BlockSpec((None, head_dim), lambda b, h, i: (h, 0))
  specs = [row_tile(), key_tile(), key_tile(), head_vec(), head_vec(), head_vec(), row_vec(),
           row_vec()]
  specs += [row_vec(), row_vec()] if tree else []
  specs += [key_vec(), key_vec()] + ([key_vec()] if tree else [])
  return specs, row_tile, key_tile


def _key_inputs(q, k, v, sink_key, sink_value, visibility, key_positions):
  """The kernel's inputs on the keys' side: ``(k, v, sink_key, sink_value, slopes)`` in
  ``q``'s dtype with the keys padded to whole blocks, and ``[key ranks, key positions]``
  padded alike (padded keys get a rank no row reaches)."""
  num_heads, head_dim = q.shape[2:]
  slopes = jnp.broadcast_to(alibi_slopes(num_heads)[:, None], (num_heads, head_dim))
  tensors = (_pad_to(k.astype(q.dtype), 1, BLOCK_K), _pad_to(v.astype(q.dtype), 1, BLOCK_K),
             sink_key.astype(q.dtype), sink_value.astype(q.dtype), slopes)
  keys = [_pad_to(visibility.key_rank_BxS, 1, BLOCK_K, jnp.iinfo(jnp.int32).max),
          _pad_to(key_positions, 1, BLOCK_K)]
  return tensors, keys


def _flash(q, k, v, sink_key, sink_value, visibility, query_positions, key_positions, alibi,
           by_shape):
  """Pads keys to whole blocks (padded keys seen by no row); the rows of a tile past the
  call's are masked in the kernel (the backward pass pads them: they see only the sink).

  Under a device mesh (``jax.set_mesh``, as the trainer runs) the kernel runs per shard
  through ``shard_map``: rows of the batch split over the mesh's data axes and heads over its
  ``tensor`` axis, each device running the kernel on its own rows and heads (XLA cannot
  partition the kernel's custom call itself).
  """
  num_rows = q.shape[1]
  tree = visibility.row_nodes_BxTx2 is not None
  rows = [visibility.row_limit_BxT, query_positions]
  if tree:
    rows += [visibility.row_nodes_BxTx2[..., w] for w in (0, 1)]
  key_tensors, keys = _key_inputs(q, k, v, sink_key, sink_value, visibility, key_positions)
  if tree:
    keys.append(_pad_to(visibility.key_node_BxS, 1, BLOCK_K, -1))
  ints = tuple(tuple(x.astype(jnp.int32) for x in group) for group in (rows, keys))
  args = (q, *key_tensors, ints)
  core = lambda *xs: _flash_core(*xs, alibi, tree, by_shape)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.size > 1:
    split_heads = "tensor" in mesh.axis_names and q.shape[2] % mesh.shape["tensor"] == 0
    heads = "tensor" if split_heads else None
    batch = tuple(a for a in mesh.axis_names if a != "tensor") or None
    tile, per_row = P(batch, None, heads, None), P(batch, None)
    core = jax.shard_map(core, mesh=mesh, out_specs=tile, check_vma=False,
                         in_specs=(tile, tile, tile) + (P(heads, None),) * 3
                                  + (jax.tree_util.tree_map(lambda _: per_row, ints),))
  return core(*args)


def _flash_tail(q, k, v, sink_key, sink_value, visibility, query_positions, key_positions, alibi):
  """A tree call in rank order (:class:`asarm_jax.masks.Tail`; forward only, one device), in two
  kernel calls: every row over the keys of ranks below the tails' base in slot order (a
  batch row's rows sharing their key loads, as in any call), then each row group over its
  tail, from the state where the first call left its rows (:func:`_tail_kernel`)."""
  tail = visibility.tail
  batch, num_rows, num_heads, head_dim = q.shape
  groups, group_size = tail.group_rows_GxP.shape
  width = tail.slot_BxGxW.shape[2]
  per_group = lambda x_BxGxW: x_BxGxW.reshape((batch * groups, -1)).astype(jnp.int32)
  # B x T -> (B G) x BLOCK_Q: each group's rows' integers, padded rows getting row 0's.
  group_rows_GxQ = _pad_to(tail.group_rows_GxP, 1, BLOCK_Q).astype(jnp.int32)
  by_group = lambda x_BxT: per_group(jnp.take(x_BxT, group_rows_GxQ, axis=1))

  q = _pad_to(q, 1, BLOCK_Q)
  key_tensors, keys = _key_inputs(q, k, v, sink_key, sink_value, visibility, key_positions)
  below_base = jnp.minimum(visibility.row_limit_BxT, tail.base_B[:, None])
  rows = [_pad_to(below_base, 1, BLOCK_Q), _pad_to(query_positions, 1, BLOCK_Q)]
  ints = tuple(tuple(x.astype(jnp.int32) for x in group) for group in (rows, keys))
  state = _flash_forward(q, *key_tensors, ints, alibi, False, to_state=True)

  k, v, _, _, slopes = key_tensors
  # The grid: (B G, N, 1). A group's program reads its batch row's rows, states and cache.
  of_row = lambda size: pl.BlockSpec((None, size, None, head_dim),
                                     lambda g, h, i: (g // groups, 0, h, 0))
  row_stat = pl.BlockSpec((None, q.shape[1], None), lambda g, h, i: (g // groups, 0, h))
  of_group = lambda size: pl.BlockSpec((None, size), lambda g, h, i: (g, 0))
  out = _call(functools.partial(_tail_kernel, num_key_blocks=width // BLOCK_K,
                                scale=head_dim ** -0.5, alibi=alibi),
              (batch * groups, num_heads, 1),
              [of_row(q.shape[1]), of_row(k.shape[1]), of_row(k.shape[1]),
               pl.BlockSpec((None, head_dim), lambda g, h, i: (h, 0)),
               pl.BlockSpec((None, BLOCK_Q), lambda g, h, i: (g % groups, 0)),
               of_group(BLOCK_Q), of_group(BLOCK_Q), of_group(width), of_group(width),
               of_group(width), of_row(q.shape[1]), row_stat, row_stat],
              pl.BlockSpec((None, BLOCK_Q, None, head_dim), lambda g, h, i: (g, 0, h, 0)),
              jax.ShapeDtypeStruct((batch * groups, BLOCK_Q, num_heads, head_dim), q.dtype),
              q, k, v, slopes, group_rows_GxQ, by_group(tail.row_limit_BxT),
              by_group(query_positions), per_group(tail.slot_BxGxW), per_group(tail.rank_BxGxW),
              per_group(jnp.take_along_axis(key_positions, tail.slot_BxGxW.reshape(batch, -1), 1)),
              *state)
  out = out[:, :group_size].reshape((batch, groups * group_size, num_heads, head_dim))
  return jnp.zeros((batch, num_rows, num_heads, head_dim), q.dtype).at[
      :, tail.group_rows_GxP.reshape(-1)].set(out)


def _call(kernel, grid, in_specs, out_specs, out_shape, *args, block_q: int = BLOCK_Q):
  return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape, interpret=interpreted(),
                        compiler_params=None if interpreted() else _compiler_params(block_q))(
                            *args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _flash_core(q, k, v, sink_key, sink_value, slopes, ints, alibi, tree, by_shape):
  """The output ``B x T x N x H``; ``ints``: the rows' integers (``T`` each) and the keys'
  (padded to whole key blocks), two tuples."""
  return _flash_forward(q, k, v, sink_key, sink_value, slopes, ints, alibi, tree,
                        by_shape=by_shape)[0]


def _key_splits(programs: int, num_blocks: int) -> int:
  """Runs of key blocks per query tile (a divisor of ``num_blocks``) that bring a grid of
  ``programs`` programs nearest ``_FULL_GRID`` without passing it."""
  most = max(1, min(num_blocks, _FULL_GRID // programs))
  return max(d for d in range(1, most + 1) if num_blocks % d == 0)


def _combine(acc_SxBxTxNxH, max_SxBxTxN, sum_SxBxTxN, dtype):
  """The output and the lse (``B x N x T``) of the splits' online-softmax states. The splits
  are few (at most the key blocks) and met in order, elementwise: XLA makes it one kernel,
  where a reduction over the splits (whose maximum feeds the sums) took two."""
  maxes, sums, accs = list(max_SxBxTxN), list(sum_SxBxTxN), list(acc_SxBxTxNxH)
  top_BxTxN = functools.reduce(jnp.maximum, maxes)
  weights = [jnp.exp2(m - top_BxTxN) for m in maxes]
  total_BxTxN = functools.reduce(jnp.add, [w * s for w, s in zip(weights, sums)])
  out = functools.reduce(jnp.add, [w[..., None] * a for w, a in zip(weights, accs)])
  out = out / total_BxTxN[..., None]
  return out.astype(dtype), jnp.transpose(top_BxTxN + jnp.log2(total_BxTxN), (0, 2, 1))


def _flash_forward(q, k, v, sink_key, sink_value, slopes, ints, alibi, tree, to_state=False,
                   by_shape=False):
  """``(output, lse B x N x T)``, or (``to_state``) the online softmax's float32 state
  ``(accumulator B x T x N x H, max B x T x N, sum B x T x N)``. With
  ``by_shape`` the work is cut to the call's shape: query tiles of :func:`_query_block` rows,
  and a grid too small to fill the device (a decoding call at batch 1: one query tile per
  head) runs several programs per query tile over runs of the key blocks and combines their
  states (flash-decoding); a row's rounding then depends on the call's shape."""
  batch, num_rows, num_heads, head_dim = q.shape
  num_blocks = k.shape[1] // BLOCK_K
  block_q = _query_block(num_rows, by_shape)
  tiles = -(-num_rows // block_q)
  splits = 1
  if by_shape and not to_state:
    splits = _key_splits(batch * num_heads * tiles, num_blocks)
  specs, row_tile, _ = _specs(batch, num_rows, k.shape[1], head_dim, tree, False, splits,
                              block_q)
  float32 = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  if to_state or splits > 1:  # states, with a leading axis of splits
    by_split = lambda *tail: lambda b, h, i: (i % splits, b, i // splits, h, *tail)
    stat = pl.BlockSpec((None, None, block_q, None), by_split())
    out_specs = [pl.BlockSpec((None, None, block_q, None, head_dim), by_split(0)), stat, stat]
    out_shape = [float32((splits,) + q.shape), *[float32((splits,) + q.shape[:3])] * 2]
  else:
    out_specs = [row_tile(), pl.BlockSpec((None, None, block_q), lambda b, h, i: (b, h, i))]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), float32((batch, num_heads, num_rows))]
  kernel = functools.partial(_forward_kernel, num_key_blocks=num_blocks // splits,
                             scale=head_dim ** -0.5, alibi=alibi, tree=tree,
                             to_state=to_state or splits > 1, splits=splits, block_q=block_q,
                             num_rows=num_rows if num_rows % block_q else None)
  outs = _call(kernel, (batch, num_heads, tiles * splits),
               specs, out_specs, out_shape, q, k, v, sink_key, sink_value, slopes, *ints[0],
               *ints[1], block_q=block_q)
  if to_state:
    return [x[0] for x in outs]
  if splits > 1:
    return _combine(*outs, q.dtype)
  return outs


def _flash_fwd(q, k, v, sink_key, sink_value, slopes, ints, alibi, tree, by_shape):
  out, lse = _flash_forward(q, k, v, sink_key, sink_value, slopes, ints, alibi, tree,
                            by_shape=by_shape)
  return out, (q, k, v, sink_key, sink_value, slopes, ints, out, lse)


def _flash_bwd(alibi, tree, by_shape, residuals, dout):
  q, k, v, sink_key, sink_value, slopes, ints, out, lse = residuals
  call_rows = q.shape[1]
  block_q = _query_block(call_rows, by_shape)
  # The backward's kernels take whole tiles of rows: padded rows see only the sink (limit 0)
  # and get a zero output gradient, so a zero delta and no share of any gradient.
  q, out, dout = (_pad_to(x, 1, block_q) for x in (q, out, dout))
  row_ints, key_ints = ints
  padded_ints = (*(_pad_to(x, 1, block_q) for x in row_ints), *key_ints)
  lse = _pad_to(lse, 2, block_q)
  batch, num_rows, num_heads, head_dim = q.shape
  num_keys = k.shape[1]
  scale = head_dim ** -0.5
  common = dict(scale=scale, alibi=alibi, tree=tree)
  per_row = pl.BlockSpec((None, None, block_q), lambda b, h, i: (b, h, i))
  per_tile = pl.BlockSpec((None, None, None, head_dim), lambda b, h, i: (b, h, i, 0))
  tiles = num_rows // block_q
  specs, row_tile, _ = _specs(batch, num_rows, num_keys, head_dim, tree, False, 1, block_q)
  float32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  # Per tile: dq; delta = rowsum(dO * O) (B x N x T); the sink's key and value gradients.
  dq, delta, d_sink_key, d_sink_value = _call(
      functools.partial(_dq_kernel, num_key_blocks=num_keys // BLOCK_K, **common),
      (batch, num_heads, tiles), specs + [row_tile(), row_tile(), per_row],
      [row_tile(), per_row, per_tile, per_tile],
      [jax.ShapeDtypeStruct(q.shape, q.dtype), float32(batch, num_heads, num_rows),
       *[float32(batch, num_heads, tiles, head_dim)] * 2],
      q, k, v, sink_key, sink_value, slopes, *padded_ints, out, dout, lse,
      block_q=block_q)
  dq = dq[:, :call_rows]
  d_sink_key, d_sink_value = (x.sum((0, 2)) for x in (d_sink_key, d_sink_value))

  lse_all = pl.BlockSpec((None, None, num_rows), lambda b, h, j: (b, h, 0))
  specs, row_tile, key_tile = _specs(batch, num_rows, num_keys, head_dim, tree, True)
  dk, dv = _call(functools.partial(_dkv_kernel, num_query_blocks=num_rows // block_q,
                                   block_q=block_q, **common),
                 (batch, num_heads, num_keys // BLOCK_K), specs + [row_tile(), lse_all, lse_all],
                 [key_tile(), key_tile()],
                 [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
                 q, k, v, sink_key, sink_value, slopes, *padded_ints, dout, lse, delta,
                 block_q=block_q)
  return (dq, dk, dv, d_sink_key.astype(sink_key.dtype), d_sink_value.astype(sink_value.dtype),
          None, jax.tree_util.tree_map(lambda _: None, ints))


_flash_core.defvjp(_flash_fwd, _flash_bwd)
