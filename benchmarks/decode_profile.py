"""Each decoder's real calls against the hardware's limit: ``sampling.generate`` timed, profiled
and set beside its roofline.

  python -m benchmarks decode_profile --config=xlnet_base [--specs=sequential,assd:5,...] \
      [--batches=1,64] [--trace_dir=DIR]

For every sampler of ``--specs`` and batch of ``--batches``: random weights of the config (its
compute dtype), ``--length`` tokens per row (default the model's maximum) of which a random
``--visible`` fraction is the prompt, temperature ``--temperature``. One untimed
``sampling.generate`` call compiles; ``--repeats`` calls are timed to ``block_until_ready``, each
divided by its ``num_network_calls`` (the batch's calls: the prefill plus every round's calls),
and the median is ``wall_ms_per_call``. One more call runs under ``jax.profiler.trace`` inside
the annotation ``decode_profile_call``; the kernels of the GPU's streams in that span give
``gpu_ms_per_call`` (their durations summed), ``gpu_busy_ms_per_call`` (the union of their
intervals), ``kernels_per_call`` and the ``--top`` kernels by time, ``top_kernels`` (name, ms
per call, share of the summed time, launches per call), all divided by that call's
``num_network_calls``. Without a GPU those fields are null.
The profiled call's ``trace_summary`` records (busy time per thread) come too; the host's
runtime threads are in the trace with ``--host_tracer_level=2`` (a trace several times larger:
does the GPU wait on the host?). The profiled call runs without CUDA graphs (the timed calls
follow ``sampling.generate``'s rule), so its span is not the wall time. ``--compile_workers=N``
runs the compiling calls in N threads at once (they overlap on the device, XLA's autotuning
included; the timed and profiled calls run alone). ``--deterministic=true`` profiles the
batch-invariant network of deterministic decoding instead (``models.batch_invariant``: its
matmul kernels and attention).

The roofline (:func:`call_cost`, :func:`roofline_ms`) of one call with ``R`` content rows, ``K``
query rows and ``S`` cache slots read per row, at batch ``B``, for a model of ``layers``,
``d`` (d_model), ``f`` (d_ff), vocabulary ``V``, ``W`` bytes of weights in the compute dtype and
``e`` bytes per cached element (the compute dtype's):

  bytes = W + B * (S + R) * layers * 2 * d * e         weights once, K and V read and written
  FLOPs = B * [2 * layers * (R * (4d^2 + 2df) + K * (2d^2 + 2df))   projections and MLP
               + 4 * d * (R + K) * S * layers                      scores and weighted values
               + 2 * d * V * H]                                    the head, on the H rows used
  roofline ms = 1e3 * max(bytes / --hbm_bytes_per_s, FLOPs / --peak_flops)

(a content row runs the q, k, v and o projections, a query row q and o only.) The calls of a
generation (``m`` prompt tokens of ``L``; the pointer moves from ``m`` to ``L``, so a round's
rows read ``S = (m + L) / 2`` committed slots on average):

  prefill:       R = m, K = the first call's query rows (k; tree: D + 1), S = m
  sequential:    R = 1, K = 1
  assd k:        density call R = k, K = k + 1; draft call R = 1, K = k (auto: as assd at its
                 largest k)
  assd_fused k:  R = k + 1, K = (k + 1) + (k + 1) k, H = 2k + 1 (the density rows and the
                 realised acceptance's draft rows)
  tree N, D:     R = 1 + N, K = (N + 1)(D + 1), H = N + 1 + D (every node's exact row and the
                 stop node's draft rows), S = (m + L) / 2 + N (its node slots; L + N in the cache)
  mdlm k:        R = L, K = k, S = L (uncached: every content row, every call)

(H = K where not given.)

``roofline_ms`` per call is the prefill's plus ``rounds`` times each round call's, over
``num_network_calls`` (``rounds = (calls - 1) / calls per round``); likewise ``bytes_per_call``
and ``flops_per_call``. ``ratio = gpu_ms_per_call / roofline_ms``, ``wall_ratio`` the wall's.
``tokens_per_call``: tokens a row gets per call of the batch (mean generated over calls).
One ``decode_profile`` record per (spec, batch), also printed as a table.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import os
import re
import tempfile
import time
from typing import Any, Iterator

import jax
import numpy as np

from asarm_jax import models, sampling
from asarm_jax.sampling import core
from asarm_jax.sampling.spec import SamplerSpec
from benchmarks import cli, common, records, report, sampling_speed, trace_summary

WITHIN = "decode_profile_call"  # the profiled call's annotation
# Device threads that are derived summaries of the kernels, not streams.
DERIVED_LINES = re.compile(r"XLA Ops|XLA Modules|Steps|Framework|TensorFlow|Source|Launch|count",
                           re.IGNORECASE)
SHOWN = ("wall_ms_per_call", "gpu_ms_per_call", "kernels_per_call", "roofline_ms", "ratio",
         "wall_ratio", "tokens_per_call")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  cli.add_decode_cases(parser)
  parser.add_argument("--attention_impl", default="", help="override model.attention_impl")
  parser.add_argument("--fused_decoding", type=cli.flag_bool, default=None,
                      help="override model.fused_decoding (the fused kernels of few-row calls)")
  parser.add_argument("--visible", type=float, default=0.05, help="prompt fraction of a row")
  parser.add_argument("--temperature", type=float, default=0.2)
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per case")
  parser.add_argument("--trace_dir", default="",
                      help="keep each case's Perfetto trace under DIR/CASE (default: deleted)")
  parser.add_argument("--top", type=int, default=8, help="kernels listed per case")
  parser.add_argument("--compile_workers", type=int, default=1,
                      help="threads that run the compiling calls at once")
  parser.add_argument("--host_tracer_level", type=int, default=1,
                      help="the profiler's host events: 1 annotations only (a small trace), "
                      "2 also the runtime's")
  parser.add_argument("--hbm_bytes_per_s", type=float, default=4.8e12,
                      help="memory bandwidth of the roofline (H200)")
  parser.add_argument("--peak_flops", type=float, default=790e12,
                      help="16-bit matmul FLOP/s of the roofline (H200, measured)")


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What the roofline needs of a model: ``weight_bytes`` (all parameters in the compute dtype)
  and ``element_bytes`` (one cached key or value element)."""
  num_layers: int
  d_model: int
  d_ff: int
  vocab_size: int
  weight_bytes: float
  element_bytes: int = 2


@dataclasses.dataclass(frozen=True)
class Shape:
  """One network call per row: ``content`` rows R, ``query`` rows K, ``slots`` S read per row,
  and the ``head`` rows H that the head runs on (default: every query row)."""
  content: int
  query: int
  slots: float
  head: int | None = None


def call_cost(sizes: Sizes, shape: Shape, batch: int) -> tuple[float, float]:
  """``(bytes, FLOPs)`` that one call of ``shape`` at ``batch`` must move and do (module doc)."""
  d, f, layers = sizes.d_model, sizes.d_ff, sizes.num_layers
  kv = batch * (shape.slots + shape.content) * layers * 2 * d * sizes.element_bytes
  matmul = 2 * layers * (shape.content * (4 * d * d + 2 * d * f)
                         + shape.query * (2 * d * d + 2 * d * f))
  attention = 4 * d * (shape.content + shape.query) * shape.slots * layers
  head = 2 * d * sizes.vocab_size * (shape.query if shape.head is None else shape.head)
  return sizes.weight_bytes + kv, batch * (matmul + attention + head)


def roofline_ms(num_bytes: float, flops: float, hbm_bytes_per_s: float,
                peak_flops: float) -> float:
  """Milliseconds of a call that moves ``num_bytes`` and does ``flops`` at the hardware's limit."""
  return 1e3 * max(num_bytes / hbm_bytes_per_s, flops / peak_flops)


def call_shapes(spec: SamplerSpec, prompt: int, length: int) -> tuple[Shape, list[Shape]]:
  """The prefill's shape and a round's calls' shapes, for ``prompt`` = m tokens of ``length``."""
  slots = (prompt + length) / 2
  k, nodes, depth = spec.k, spec.num_nodes, spec.depth
  fused = [Shape(k + 1, (k + 1) + (k + 1) * k, slots, 2 * k + 1)]
  rounds = {"sequential": [Shape(1, 1, slots)],
            "assd": [Shape(k, k + 1, slots), Shape(1, k, slots)],
            "assd_fused": fused, "auto": fused,  # auto: at its largest size
            "tree": [Shape(1 + nodes, (nodes + 1) * (depth + 1), slots + nodes,
                           nodes + 1 + depth)],
            "mdlm": [Shape(length, k, length)]}[spec.method]
  first = {"sequential": 1, "tree": depth + 1}.get(spec.method, k)
  return Shape(prompt, first, prompt), rounds


def roofline(sizes: Sizes, spec: SamplerSpec, batch: int, prompt: int, length: int, calls: int,
             hbm_bytes_per_s: float, peak_flops: float) -> dict[str, float]:
  """``bytes_per_call``, ``flops_per_call`` and ``roofline_ms`` averaged over a generation of
  ``calls`` network calls (the prefill, then whole rounds)."""
  prefill, round_shapes = call_shapes(spec, prompt, length)
  rounds = (calls - 1) / len(round_shapes)
  totals = np.zeros(3)
  for shape, count in [(prefill, 1.0)] + [(s, rounds) for s in round_shapes]:
    num_bytes, flops = call_cost(sizes, shape, batch)
    totals += count * np.array([num_bytes, flops,
                                roofline_ms(num_bytes, flops, hbm_bytes_per_s, peak_flops)])
  return dict(zip(("bytes_per_call", "flops_per_call", "roofline_ms"), totals / calls))


def sizes_of(model: Any, params: Any) -> Sizes:
  """The :class:`Sizes` of a built ``model`` with its ``params`` (counted in its compute dtype)."""
  element = np.dtype(model.dtype).itemsize
  count = sum(x.size for x in jax.tree.leaves(params))
  return Sizes(model.num_layers, model.d_model, model.d_ff, model.vocab_size, count * element,
               element)


@dataclasses.dataclass(frozen=True)
class Case:
  """One (spec, batch) with its prompts: tokens and visible, ``batch x length``."""
  text: str
  spec: SamplerSpec
  tokens: jax.Array
  visible: jax.Array


def decode(model: Any, params: Any, case: Case, seed: int) -> sampling.Generation:
  """One ``sampling.generate`` call of ``case``, finished."""
  return jax.block_until_ready(sampling.generate(model, params, case.tokens, case.visible,
                                                 jax.random.key(seed), spec=case.spec))


def device_kernels(events: list[dict], names: dict) -> list[dict]:
  """The kernels (complete events) of the GPU streams within the annotation, of a trace read
  by ``trace_summary.load``; empty without a GPU."""
  low, high = trace_summary.span(events, WITHIN)
  streams = {(pid, tid) for (pid, tid), name in names.items()
             if tid is not None and "/device:GPU" in names.get((pid, None), "")
             and not DERIVED_LINES.search(name)}
  return [e for e in events if e.get("ph") == "X" and (e["pid"], e["tid"]) in streams
          and low <= e["ts"] < high]


def kernel_metrics(kernels: list[dict], calls: int, top: int) -> dict[str, Any]:
  """GPU ms per call (summed and busy), kernels per call and the ``top`` kernels; None without
  kernels."""
  if not kernels:
    return {"gpu_ms_per_call": None, "gpu_busy_ms_per_call": None, "kernels_per_call": None,
            "top_kernels": None}
  total = sum(e["dur"] for e in kernels)
  busy = trace_summary.busy_us([(e["ts"], e["ts"] + e["dur"]) for e in kernels],
                               min(e["ts"] for e in kernels),
                               max(e["ts"] + e["dur"] for e in kernels))
  by_name, launches = collections.Counter(), collections.Counter()
  for e in kernels:
    by_name[e["name"]] += e["dur"]
    launches[e["name"]] += 1
  return {"gpu_ms_per_call": total / 1e3 / calls, "gpu_busy_ms_per_call": busy / 1e3 / calls,
          "kernels_per_call": len(kernels) / calls,
          "top_kernels": [{"kernel": name[:100], "ms": dur / 1e3 / calls, "share": dur / total,
                           "launches": launches[name] / calls}
                          for name, dur in by_name.most_common(top)]}


@contextlib.contextmanager
def without_graphs() -> Iterator[None]:
  """Within it every sampling loop runs without CUDA graphs (``$ASARM_JAX_COMMAND_BUFFERS``
  ``off``): the profiler does not see the kernels a graph launches (2026-12-06, on an H100: a
  batch-1 sequential call on graphs showed 1.3 of its 220 kernels)."""
  before = os.environ.get(core.COMMAND_BUFFERS_ENV)
  os.environ[core.COMMAND_BUFFERS_ENV] = "off"
  try:
    yield
  finally:
    if before is None:
      del os.environ[core.COMMAND_BUFFERS_ENV]
    else:
      os.environ[core.COMMAND_BUFFERS_ENV] = before


def profile(model: Any, params: Any, case: Case, folder: str,
            host_tracer_level: int) -> tuple[sampling.Generation, str]:
  """One call of ``case`` under the profiler, without CUDA graphs (:func:`without_graphs`;
  compiled before the trace where the timed calls ran on graphs), its trace under ``folder``:
  the generation and the Perfetto file."""
  options = jax.profiler.ProfileOptions()
  options.host_tracer_level, options.python_tracer_level = host_tracer_level, 0
  options.enable_hlo_proto = False
  on_graphs = core.command_buffers(case.spec, case.tokens.shape[0],
                                   models.is_batch_invariant(model))
  with without_graphs():
    if on_graphs:  # its program without graphs is not compiled yet
      decode(model, params, case, seed=99)
    with jax.profiler.trace(folder, create_perfetto_trace=True, profiler_options=options):
      with jax.profiler.TraceAnnotation(WITHIN):
        out = decode(model, params, case, seed=0)
  trace_summary.keep_perfetto_only(folder)
  return out, trace_summary.perfetto_files(folder)[0]


def measure(model: Any, params: Any, case: Case, repeats: int, folder: str,
            host_tracer_level: int, top: int = 8) -> tuple[dict[str, Any], list[dict]]:
  """The case's timed and profiled metrics, and its trace's ``trace_summary`` records."""
  per_call = []
  for seed in range(1, repeats + 1):
    start = time.perf_counter()
    out = decode(model, params, case, seed)
    per_call.append((time.perf_counter() - start) / int(out.num_network_calls))
  out, path = profile(model, params, case, folder, host_tracer_level)
  calls = int(out.num_network_calls)
  loaded = trace_summary.load(path)
  kernels = device_kernels(*loaded)
  if not kernels and jax.default_backend() == "gpu":
    print(f"warning: no GPU stream events in {path}", flush=True)
  metrics = {"wall_ms_per_call": 1e3 * float(np.median(per_call)),
             **kernel_metrics(kernels, calls, top),
             "tokens_per_call": float(np.mean(out.num_generated_B)) / calls,
             "num_network_calls": calls}
  return metrics, trace_summary.summary(path, top, WITHIN, loaded)


def run(config: str = "xlnet_base", attention_impl: str = "",
        specs: list[str] = ("sequential",), batches: list[int] = (1,), length: int = 0,
        visible: float = 0.05, temperature: float = 0.2, repeats: int = 3, trace_dir: str = "",
        compile_workers: int = 1, host_tracer_level: int = 1, hbm_bytes_per_s: float = 4.8e12,
        peak_flops: float = 790e12, deterministic: bool = False, top: int = 8,
        fused_decoding: bool | None = None) -> Iterator[dict]:
  """One ``decode_profile`` record per (spec, batch), each yielded once measured, then the
  traces' ``trace_summary`` records."""
  model, params, loaded = common.random_model(config, attention_impl=attention_impl or None,
                                              fused_decoding=fused_decoding)
  if deterministic:
    model = models.batch_invariant(model)
  sizes = sizes_of(model, params)
  length = length or loaded.data.seq_len
  rows = np.random.default_rng(0).integers(model.num_special_tokens, model.vocab_size,
                                           (max(batches), length), dtype=np.int32)
  cases = [Case(text, cli.parse_spec(text).replace(temperature=temperature),
                *sampling_speed.prompts(rows, batch, visible))
           for text in specs for batch in batches]
  with concurrent.futures.ThreadPoolExecutor(compile_workers) as pool:  # compiles, untimed
    list(pool.map(lambda case: decode(model, params, case, seed=99), cases))
  described = common.model_config(config, attention_impl=model.attention_impl,
                                  fused_decoding=model.fused_decoding)
  made, summaries = [], []
  with tempfile.TemporaryDirectory() as scratch:
    for case in cases:
      batch = case.tokens.shape[0]
      folder = os.path.join(trace_dir or scratch, f"{case.spec.tag()}_b{batch}")
      measured, summary = measure(model, params, case, repeats, folder, host_tracer_level, top)
      calls, gpu = measured["num_network_calls"], measured["gpu_ms_per_call"]
      cost = roofline(sizes, case.spec, batch, int(visible * length), length, calls,
                      hbm_bytes_per_s, peak_flops)
      metrics = {**{k: measured[k] for k in ("wall_ms_per_call", "gpu_ms_per_call",
                                            "gpu_busy_ms_per_call", "kernels_per_call")},
                 **cost, "ratio": None if gpu is None else gpu / cost["roofline_ms"],
                 "wall_ratio": measured["wall_ms_per_call"] / cost["roofline_ms"],
                 "tokens_per_call": measured["tokens_per_call"], "num_network_calls": calls,
                 "top_kernels": measured["top_kernels"]}
      made.append(records.make("decode_profile", {
          "spec": case.text, "batch": batch, "visible": visible, "temperature": temperature,
          "length": length, "deterministic": deterministic,
          "command_buffers": core.command_buffers(case.spec, batch, deterministic),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}, metrics, described))
      yield made[-1]
      summaries += summary
      print(f"{case.text} batch {batch}: " + ", ".join(
          f"{k} {report.cell(metrics[k])}" for k in SHOWN), flush=True)
  shown = [{**r, "metrics": {k: r["metrics"][k] for k in SHOWN}} for r in made]
  print("\n".join(report.table(shown)), flush=True)
  yield from summaries
