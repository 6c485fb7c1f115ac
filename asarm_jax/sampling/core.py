"""The one sampling loop: a prefill, then rounds until every row is finished.

``generate`` checks its arguments, resolves the :class:`~asarm_jax.sampling.spec.SamplerSpec`
and runs one jit-compiled ``lax.while_loop`` per (network, spec, shapes): no host sync inside,
no retrace per prompt. The loop body is the method's round (:mod:`asarm_jax.sampling.methods`);
the state it carries is :class:`~asarm_jax.sampling.state.State`.

With ``cache=True`` the content stream keeps a rank-indexed KV cache: the prefill writes the
prompt, and each later call computes only the content rows not yet cached (committed tokens
and the tokens being scored); stale slots from rejected drafts are masked out and overwritten
when their rank is committed. Without it every call recomputes every content row.

Call counting: the prefill counts 1, and every method spends at most one call per generated
token on a row (each method's module says how).
"""
from __future__ import annotations

import functools
import itertools
import os
import warnings
from typing import Any, Callable

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import models
from asarm_jax.sampling import cost_model, methods
from asarm_jax.sampling import queue as queue_lib
from asarm_jax.sampling import state as state_lib
from asarm_jax.sampling.methods import auto
from asarm_jax.sampling.network import ModelNetwork, Network, as_network
from asarm_jax.sampling.spec import METHODS, SamplerSpec

Array = jnp.ndarray


@flax.struct.dataclass
class Generation:
  """``tokens_BxL``: prompts with every real hidden position filled (padding untouched);
  ``num_calls_B``: network calls counted per row; ``num_generated_B``: tokens generated per
  row; ``num_network_calls``: network calls the batch made (a scalar: the prefills plus each
  round's calls, for every row at once, finished rows included); ``rounds_by_size_BxS``:
  ``auto``'s rounds of each row at each draft size of ``methods.auto.sizes(spec)`` (``B x 0``
  for the other methods)."""
  tokens_BxL: Array
  num_calls_B: Array
  num_generated_B: Array
  num_network_calls: Array
  rounds_by_size_BxS: Array


def _row_keys(rng: jax.Array, num_rows: int) -> jax.Array:
  """One key per row: ``rng`` itself if it holds ``N`` keys, else ``fold_in(rng, i)`` for row
  ``i``."""
  if rng.ndim:
    return rng
  return jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.arange(num_rows, dtype=jnp.uint32))


def _loop(net: Network, spec: SamplerSpec, use_cache: bool, num_slots: int, refill_rows: int,
          params: Any, tokens_NxL: Array, visible_NxL: Array, order_NxL: Array, length_N: Array,
          rng: jax.Array, temperature: Array, round_ms_S: Array | None) -> Generation:
  """The first ``S`` rows' prefill, then rounds (with slots refilled from the queue) until every
  row is finished."""
  method = methods.STRATEGIES[spec.method]
  num_rows = tokens_NxL.shape[0]
  rows = queue_lib.Rows(tokens_NxL, visible_NxL, order_NxL, length_N,
                        _row_keys(rng, num_rows))
  state, queue = queue_lib.start(net, params, spec, method, use_cache, rows, num_slots,
                                 dict(temperature=temperature, round_ms_S=round_ms_S))

  def unfinished(carry):
    state, queue, _ = carry
    return jnp.any(state_lib.live(state)) | queue_lib.waiting(queue)

  def round(carry):
    state, queue, num_calls = carry
    if num_slots < num_rows:
      state, queue = queue_lib.refill(net, params, spec, method, use_cache, state, queue,
                                      refill_rows)
    num_calls += methods.round_calls(method, spec, state)
    return method.round(net, params, spec, state), queue, num_calls

  state, queue, num_calls = jax.lax.while_loop(unfinished, round,
                                               (state, queue, jnp.int32(1)))
  queue = queue_lib.write_out(method, spec, queue, state, jnp.arange(num_slots))
  return Generation(tokens_BxL=queue.tokens_NxL, num_calls_B=queue.num_calls_N,
                    num_generated_B=queue.num_generated_N,
                    num_network_calls=num_calls + queue.num_prefills,
                    rounds_by_size_BxS=queue.rounds_by_size_NxS)


_serial = itertools.count()

# XLA's options for the loop. On GPUs, copy insertion proves by default only so much of a
# program's live ranges region by region; past that (a 12-layer model's sampling loop is past
# it) it keeps the copies it puts around conditionals, and ``auto``'s ``lax.switch`` rounds
# copied every layer of the KV cache in and out: 48 copies of a 50 MB tensor a round at batch
# 64 (``benchmarks/compiled_kernels.py``). Without the limit there are none. Other backends
# ignore the option. XLA takes options per program: where ``generate`` is traced inside
# another ``jax.jit``, that program's options apply.
COMPILER_OPTIONS = {"xla_gpu_copy_insertion_use_region_analysis": True}

# And for deterministic decoding: with excess precision allowed (XLA's default), XLA removes a
# bf16 rounding, ``convert(convert(x, bf16), f32)``, where the two converts meet, and whether
# they meet depends on the shapes. At batch 1 a slice of the padded head rows sits between the
# logits' two converts and the logits are rounded to bf16; at batch 64 nothing does and they
# keep float32: the same row got other tokens (H100, 2026-12-05, docs/sampling.md).
DETERMINISTIC_OPTIONS = {**COMPILER_OPTIONS, "xla_allow_excess_precision": False}


# CUDA graphs: XLA records the loop and its conditionals as command buffers that run on the
# device, where by default the host reads every round's predicate (and ``auto``'s branch
# index) back and launches the round's kernels one by one. XLA's default commands (FUSION to
# DYNAMIC_SLICE_FUSION) plus WHILE and CONDITIONAL: per-program options replace the list, they
# do not add to it. Measured on an H100 (2026-12-06, docs/results.md, random weights, tokens
# identical): per hidden token 5-7% faster at batch 1 for every decoder and 20-22% for
# ``auto`` at batch 1 and 64; at batch 64 the other decoders gain 3-8% a token but pay ~5 ms
# more a dispatch, which loses on short middles. Per program on JAX 0.11.2 (the same day, 8
# dispatches a point, side by side) batch 1 gained at every length: per hidden token -7% for
# sequential and -23% for ``auto``. Hence :func:`command_buffers`.
COMMAND_BUFFER_OPTIONS = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,"
                                     "DYNAMIC_SLICE_FUSION,WHILE,CONDITIONAL",
    "xla_gpu_graph_min_graph_size": 1}
# "measured" (the default: :func:`command_buffers`' rule), "on" or "off".
COMMAND_BUFFERS_ENV = "ASARM_JAX_COMMAND_BUFFERS"


def command_buffers(spec: SamplerSpec, num_slots: int, deterministic: bool) -> bool:
  """Whether a loop of ``spec`` over ``num_slots`` slots runs as CUDA graphs: where measured to
  help (``auto`` at any batch, every decoder at batch 1), unless ``$ASARM_JAX_COMMAND_BUFFERS``
  says ``on`` or ``off``; never for deterministic decoding (not timed with them). Other
  backends ignore the options."""
  setting = os.environ.get(COMMAND_BUFFERS_ENV, "measured")
  if setting not in ("measured", "on", "off"):
    raise ValueError(f"{COMMAND_BUFFERS_ENV}={setting!r}: expected measured, on or off")
  if deterministic:
    return False
  if setting != "measured":
    return setting == "on"
  return spec.method == "auto" or num_slots == 1


def compiler_options(deterministic: bool, graphs: bool = False) -> dict[str, Any]:
  """XLA's options for a sampling loop's program: :data:`DETERMINISTIC_OPTIONS` for
  deterministic decoding, else :data:`COMPILER_OPTIONS`, with :data:`COMMAND_BUFFER_OPTIONS`
  if ``graphs`` (:func:`command_buffers` decides)."""
  options = DETERMINISTIC_OPTIONS if deterministic else COMPILER_OPTIONS
  return {**options, **COMMAND_BUFFER_OPTIONS} if graphs else options


@functools.lru_cache(maxsize=16)
def _prepare_program(net: Network, signature: Any,
                     graphs: bool) -> tuple[Callable[..., list[Any]], Any, tuple[int, ...]]:
  """``net.prepare`` of params of this :func:`_signature` as ``(program, out treedef,
  sources)``: the program computes the leaves it changes; ``sources[i]`` is the input leaf
  that output leaf ``i`` returns unchanged, or ``-1 - j`` for the program's ``j``-th output.
  A program of its own, run before the loop's: inside the loop's program XLA may move its
  casts into the loop (the H200 profile of 2026-12-05, with the casts there, still showed a
  30 us convert in every batch-1 call). Unchanged leaves do not pass through it: a jitted
  output is a new buffer, so each would be copied in every dispatch (75 copy kernels of
  xlnet_base's 173 leaves, beside its 98 casts, compiled for the H200); with ``graphs`` the
  casts run as one CUDA graph."""
  treedef, leaves = signature
  closed, out_shape = jax.make_jaxpr(lambda *xs: net.prepare(jax.tree.unflatten(treedef, xs)),
                                     return_shape=True)(
      *(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype, *_ in leaves))
  inputs = {id(var): i for i, var in enumerate(closed.jaxpr.invars)}
  computed, sources = [], []
  for i, var in enumerate(closed.jaxpr.outvars):
    if id(var) in inputs:
      sources.append(inputs[id(var)])
    else:
      sources.append(-1 - len(computed))
      computed.append(i)

  def prepare(*xs):  # the leaves it changes
    outs = jax.tree.leaves(net.prepare(jax.tree.unflatten(treedef, xs)))
    return [outs[i] for i in computed]

  program = jax.jit(prepare, compiler_options=COMMAND_BUFFER_OPTIONS if graphs else None)
  return program, jax.tree.structure(out_shape), tuple(sources)


def _prepare(net: Network, params: Any, graphs: bool) -> Any:
  """``net.prepare(params)``, computed by :func:`_prepare_program`'s program."""
  program, out_treedef, sources = _prepare_program(net, _signature(params), graphs)
  leaves = jax.tree.leaves(params)
  computed = program(*leaves)
  return jax.tree.unflatten(out_treedef, [leaves[s] if s >= 0 else computed[-1 - s]
                                          for s in sources])


def sampling_loop(net: Network, spec: SamplerSpec, use_cache: bool, num_slots: int,
                  refill_rows: int) -> Callable[..., Generation]:
  """The loop of one configuration as a function, not compiled: ``(params as
  ``net.prepare`` gives them, tokens_NxL, visible_NxL, order_NxL, length_N, rng, temperature,
  round_ms_S) -> Generation``, with ``spec`` as :func:`compiled_spec` gives it. ``generate``
  jits it with :func:`compiler_options`; ``benchmarks/compiled_kernels.py`` compiles it so
  for a GPU that is not attached."""

  def loop(params, tokens_NxL, visible_NxL, order_NxL, length_N, rng, temperature, round_ms_S):
    return _loop(net, spec, use_cache, num_slots, refill_rows, params, tokens_NxL, visible_NxL,
                 order_NxL, length_N, rng, temperature, round_ms_S)

  return loop


@functools.lru_cache(maxsize=64)
def _compiled(net: Network, spec: SamplerSpec, use_cache: bool, num_slots: int,
              refill_rows: int, signature: Any, nested: bool, deterministic: bool,
              graphs: bool) -> Callable[..., Generation]:
  """The jitted loop of one configuration; ``signature`` (shapes and dtypes of the arguments)
  is in the key so that the loop is traced exactly once per entry, which chex asserts. The
  temperature is a traced argument: changing it never recompiles. With
  :func:`compiler_options`, unless ``nested`` in another trace (which rejects them)."""

  loop = sampling_loop(net, spec, use_cache, num_slots, refill_rows)
  # chex keys its trace counter on the function's name: give each entry its own counter.
  loop.__name__ = f"sample_{spec.tag()}_{next(_serial)}".replace(".", "_")
  return jax.jit(chex.assert_max_traces(loop, n=1),
                 compiler_options=None if nested else compiler_options(deterministic, graphs))


def clear_compiled() -> None:
  """Forgets every compiled loop and weight-preparing program, and JAX's own caches, so that
  their executables are freed (a process that compiles many configurations otherwise keeps up
  to 64 loops of hundreds of kernels alive); the next call traces again."""
  _compiled.cache_clear()
  _prepare_program.cache_clear()
  jax.clear_caches()


def _signature(tree: Any) -> Any:
  """Hashable tree structure, shapes, dtypes and shardings: what decides a compilation."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((jnp.shape(x), jnp.result_type(x), getattr(x, "weak_type", False),
                         getattr(x, "sharding", None)) for x in leaves)


def _check(name: str, x: Any, shape: tuple[int, ...], kinds: str, what: str) -> Array:
  x = jnp.asarray(x)
  if x.shape != shape:
    raise ValueError(f"{name} has shape {x.shape}; expected {shape}.")
  if np.dtype(x.dtype).kind not in kinds:
    raise ValueError(f"{name} has dtype {x.dtype}; expected {what}.")
  return x


def compiled_spec(spec: SamplerSpec) -> SamplerSpec:
  """The spec the loop is compiled for: settings the method does not read take their
  defaults (one compiled entry whatever their values), and ``k = 1`` of ``assd`` and
  ``parallel`` is ``sequential`` (the same round: commit the exact first draft). The
  temperature is left out: it is a traced argument."""
  if spec.method == "sequential" or (spec.k == 1 and spec.method in ("assd", "parallel")):
    return SamplerSpec(method="sequential", k=1)
  return SamplerSpec(method=spec.method, **spec.sizes(),
                     size_choice="batch" if spec.per_batch() else "row")


def _resolve(spec: SamplerSpec | None, loose: dict[str, Any]) -> SamplerSpec:
  """The spec of ``generate``'s arguments: ``spec``, or the loose keywords (defaults:
  ``assd``, ``k=5``, ``T=1``, ``depth=6``, ``ngram=2``), never both."""
  given = {name: value for name, value in loose.items() if value is not None}
  if spec is not None:
    if given:
      raise ValueError(f"pass either spec= or {sorted(given)}, not both.")
    return spec
  args = dict(method="assd", k=5, temperature=1.0, depth=6, ngram=2) | given
  return SamplerSpec.from_kwargs(**args)


def _check_count(name: str, value: Any, default: int, most: int, what: str) -> int:
  """``value`` (``default`` where None) as an int from 1 to ``most``, or a one-line error."""
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
      1 <= value <= most):
    raise ValueError(f"{name}={value!r}: expected an int from 1 to {what} ({most}).")
  return int(value)


def _row_rng(rng: Any, num_rows: int) -> jax.Array:
  """A typed key, or ``N`` of them."""
  rng = jnp.asarray(rng)
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  if rng.shape not in ((), (num_rows,)):
    raise ValueError(f"rng holds keys of shape {rng.shape}; expected one key or one per row "
                     f"({num_rows},).")
  return rng


def generate(model: nn.Module | Network, params: Any, tokens_BxL: Array, visible_BxL: Array,
             rng: jax.Array, *, spec: SamplerSpec | None = None, method: str | None = None,
             k: int | None = None, temperature: float | None = None, depth: int | None = None,
             ngram: int | None = None, order_BxL: Array | None = None,
             length_B: Array | None = None, cache: bool = True,
             slots: int | None = None, refill: int | None = None,
             deterministic: bool = False) -> Generation:
  """Fills every hidden, non-padding position of ``tokens_BxL``, in one dispatch.

  Args:
    model: a flax AS-ARM (``models.build``) or any :class:`~asarm_jax.sampling.network.Network`.
    tokens_BxL: int tokens of ``B`` rows; values at hidden positions are ignored.
    visible_BxL: bool, True on the prompt (kept unchanged).
    rng: a PRNG key (typed or raw ``uint32[2]``), or ``B`` of them (one per row). Row ``b``
      draws only from its own key, ``rng[b]`` or else ``fold_in(rng, b)``: its sample never
      depends on ``slots``, on its slot or on the other rows.
    spec: the sampler (:class:`~asarm_jax.sampling.spec.SamplerSpec`). ``method="auto"``
      chooses every row's draft size every round from its acceptance so far and the cost model
      of this machine (:mod:`asarm_jax.sampling.methods.auto`).
    method, k, temperature, depth, ngram: instead of ``spec``, the same settings as loose
      keywords (default ``assd``, ``k=5``, ``temperature=1``, ``depth=6``, ``ngram=2``);
      here ``k`` is the node budget of ``method="tree"``.
    order_BxL: optional generation keys of the hidden positions (smaller first, ties by
      position); default left to right.
    length_B: optional real lengths; positions ``>= length_B`` are padding: never generated,
      never attended to by real positions, returned unchanged.
    cache: keep a KV cache of the content stream (same distribution, much less compute).
    slots: rows decoded at once (default: all ``B``). With ``S < B`` slots, continuous
      batching (:mod:`asarm_jax.sampling.queue`): a slot whose row is finished takes the next
      row inside the loop.
    refill: with slots, the rows prefilled together in one call: a refill waits until this
      many slots are free, or as many as rows wait (default: ``S // 8``, at least 1).
    deterministic: decode with the network's batch-invariant mode (``Network.batch_invariant``,
      also implied by a model of ``models.batch_invariant``;
      for the two-stream model every matmul, every other float sum (layer norms, the
      log-softmax's normaliser) and the attention in fixed-tiling kernels,
      :mod:`asarm_jax.models.invariant_matmul`), and its program compiled without excess
      precision (:data:`DETERMINISTIC_OPTIONS`), so that a row's log-probabilities are the
      same bits whatever the batch, the slot or the rows per call. Traced inside another
      ``jax.jit``, that program's options apply (it warns): give it the same. Slower: see
      docs/sampling.md, "Deterministic decoding".

  What holds:

  * Always: every exact method samples the sequential joint (the distribution), and a row's
    random draws come from its own key only.
  * By default, tokens: on the CPU in float32 (the tests), every exact method at temperature 0
    returns sequential greedy decoding's tokens, and any ``slots`` or batch the same tokens and
    counts as each row alone. Nothing promises it bit for bit: XLA picks each matmul's
    kernel and each reduction's order per shape (and the attention kernel splits a small
    call's keys), and on the GPU in bf16 a near-tie then rounds either way, so rows differ
    between methods and batch sizes (31-41 of 64 long rows at batch 64).
  * ``deterministic=True``, tested on the CPU and measured on the GPU (H200, 2026-12-05: no
    row of 5 methods differed, at batch 1 and 64, T=0 and 1; docs/sampling.md,
    "Deterministic decoding"): a row's tokens, calls and counts do not
    depend on the batch, the other rows or ``slots``, for every method and temperature (the
    same keys; ``auto`` then chooses its draft sizes by calls per round, not by this machine's
    timings, which depend on the slots); at temperature 0 every exact method returns the same
    tokens (``tree`` needs the cache then).

  Returns:
    :class:`Generation` with ``tokens_BxL`` (``B x L``), ``num_calls_B`` and ``num_generated_B``.
  """
  spec = _resolve(spec, dict(method=method, k=k, temperature=temperature, depth=depth,
                             ngram=ngram))
  tokens_BxL = jnp.asarray(tokens_BxL)
  if tokens_BxL.ndim != 2:
    raise ValueError(f"tokens_BxL has shape {tokens_BxL.shape}; expected (batch, length).")
  shape = tokens_BxL.shape
  num_slots = _check_count("slots", slots, shape[0], shape[0], "the number of rows")
  refill_rows = _check_count("refill", refill, queue_lib.default_refill(num_slots), num_slots,
                             "the number of slots")
  tokens_BxL = _check("tokens_BxL", tokens_BxL, shape, "iu", "an integer dtype")
  visible_BxL = _check("visible_BxL", visible_BxL, shape, "b", "bool")
  order_BxL = (jnp.zeros(shape, jnp.float32) if order_BxL is None else
               _check("order_BxL", order_BxL, shape, "iuf", "an integer or float dtype"))
  length_B = (jnp.full(shape[:1], shape[1], jnp.int32) if length_B is None else
              _check("length_B", length_B, shape[:1], "iu", "an integer dtype"))
  rng = _row_rng(rng, shape[0])
  net = as_network(model)
  # A batch-invariant flax model (models.batch_invariant, as evaluation passes one) decodes
  # deterministically with or without the keyword.
  deterministic |= isinstance(net, ModelNetwork) and models.is_batch_invariant(net.model)
  if deterministic:
    if spec.method == "tree" and not cache:
      raise ValueError("deterministic tree decoding needs cache=True (its row groups read the "
                       "committed keys from the cache).")
    net = net.batch_invariant()
  round_ms_S = None
  if spec.method == "auto":  # deterministic: by calls, not by timings taken at some slots
    round_ms_S = (cost_model.prior_ms(auto.sizes(spec)) if deterministic else
                  cost_model.round_ms(net, auto.sizes(spec), num_slots))
  order_dtype = jnp.float32 if np.dtype(order_BxL.dtype).kind == "f" else jnp.int32
  # Traced inside another program (where an operation gives a tracer), whose options apply.
  nested = isinstance(jnp.zeros((), jnp.int32), jax.core.Tracer)
  graphs = command_buffers(spec, num_slots, deterministic)
  args = (_prepare(net, params, graphs and not nested), tokens_BxL.astype(jnp.int32),
          visible_BxL, order_BxL.astype(order_dtype), length_B.astype(jnp.int32), rng,
          jnp.float32(spec.temperature), round_ms_S)
  if nested and deterministic:
    warnings.warn("deterministic decoding traced inside another jax.jit takes that program's "
                  "XLA options: compile it with compiler_options=sampling.core."
                  "DETERMINISTIC_OPTIONS, or a row's tokens may depend on the batch on a GPU.",
                  stacklevel=2)
  spec = compiled_spec(spec)
  return _compiled(net, spec, bool(cache), num_slots, refill_rows, _signature(args), nested,
                   deterministic, graphs)(*args)
