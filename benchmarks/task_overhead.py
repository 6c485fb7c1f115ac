"""Where a batch-1 infilling task's time goes: the fixed cost of a sampler invocation.

  python -m benchmarks task_overhead --workdir=runs/causal [--trace=DIR]

HumanEval single-line at batch 1 costs about 7 ms per task beyond its network calls, half of
sequential decoding's time; this splits it. Rows are held-out rows of the checkpoint's corpus
(those of :mod:`benchmarks.sampling_speed`), ``--length`` real tokens (default:
three quarters of ``seq_len``, 384 of 512) with ``h`` hidden ones from position ``length // 2``
(the rest visible, like an infilling prompt), for h in ``--hidden``. Any checkpoint of the same
architecture will do: the number of calls of sequential decoding is h whatever the weights. For
every sampler of ``--specs`` and every h, ``--rows`` rows are decoded one at a time after an
untimed compiling call, and per task:

* ``dispatch_ms``: until ``sampling.generate`` returns (argument checks, the compilation cache's
  key, the launch; where JAX dispatches asynchronously, not the device's work, but on the GPU
  a sampler's ``lax.while_loop`` keeps it until the loop ends);
* ``call_ms``: until its result is ready, tasks one after another with nothing overlapped;
* ``rows_ms``: ``generation.generate_rows`` with one slot, the evaluation's loop (continuous
  batching: every task of the (sampler, h) in one dispatch, each taking the slot when the
  previous one is done).

and the host's pieces alone: ``row_keys_ms`` (the random keys of a dispatch's rows, per row)
and ``arrays_ms`` (one row's arrays). A straight line through ``call_ms`` against h gives each
method's fixed cost and its cost per hidden token. Records: one ``task_overhead`` per (sampler,
h), one ``task_overhead_fit`` per sampler and one ``task_overhead_host`` for the host's pieces.
With ``--trace=DIR``, a profiler trace of 8 tasks of the first sampler, h = 0 then the largest
h, is written under DIR as Perfetto JSON (:mod:`benchmarks.trace_summary` reads it).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from asarm_jax import inference, sampling
from asarm_jax.evaluation import generation
from asarm_jax.sampling.spec import SamplerSpec
from benchmarks import cli, records, sampling_speed, trace_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="trained workdir")
  parser.add_argument("--specs", type=cli.list_of(str), default="sequential,assd_fused:5,tree:8",
                      help="samplers: method[:k] or tree:N[:D]")
  parser.add_argument("--hidden", type=cli.list_of(int), default="0,1,4,16",
                      help="hidden tokens per row")
  parser.add_argument("--length", type=int, default=0, help="real tokens per row (the rest of "
                      "seq_len is padding); 0: three quarters of seq_len")
  parser.add_argument("--rows", type=int, default=32, help="timed rows per (sampler, hidden)")
  parser.add_argument("--temperature", type=float, default=0.2, help="sampling temperature")
  parser.add_argument("--trace", default="", help="also write a profiler trace of a few tasks "
                      "under this folder")


def task_rows(heldout: np.ndarray, hidden: int, count: int, length: int) -> list[generation.Row]:
  """``count`` rows of ``length`` real tokens, ``hidden`` of them hidden from ``length // 2``."""
  rows = []
  for i in range(count):
    visible = np.ones(heldout.shape[1], bool)
    visible[length // 2:length // 2 + hidden] = False
    rows.append(generation.Row(f"h{hidden}_{i}", heldout[i % len(heldout)].astype(np.int32),
                               visible, length))
  return rows


def per_task_ms(fn, count: int) -> float:
  start = time.perf_counter()
  for _ in range(count):
    fn()
  return 1e3 * (time.perf_counter() - start) / count


def time_calls(loaded: inference.Loaded, rows: list[generation.Row], spec: SamplerSpec,
               seed: int) -> dict:
  """Median dispatch and call milliseconds of ``rows`` decoded one at a time, and their calls."""
  dispatch, total, calls = [], [], 0
  for i, row in enumerate(rows):
    tokens, visible, length = generation._arrays([row], 1)  # pylint: disable=protected-access
    start = time.perf_counter()
    out = sampling.generate(loaded.model, loaded.params, tokens, visible,
                            jax.random.key(seed + i), spec=spec, length_B=length)
    dispatch.append(time.perf_counter() - start)
    calls += int(jax.device_get(out.num_calls_B)[0])
    total.append(time.perf_counter() - start)
  return {"dispatch_ms": 1e3 * float(np.median(dispatch)),
          "call_ms": 1e3 * float(np.median(total)), "calls_per_task": calls / len(rows)}


def time_rows(loaded: inference.Loaded, rows: list[generation.Row], spec: SamplerSpec) -> float:
  """Milliseconds per task of ``generation.generate_rows`` through one slot (a fresh cache
  file, all ``rows`` in one dispatch)."""
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    generation.generate_rows(loaded.model, loaded.params, rows, os.path.join(tmp, "rows.jsonl"),
                             spec=spec, batch_size=1, seed=0, desc=spec.describe(),
                             rows_per_dispatch=len(rows))
    return 1e3 * (time.perf_counter() - start) / len(rows)


def run(workdir: str, specs: list[str] = ("sequential",), hidden: list[int] = (0, 4),
        length: int = 0, rows: int = 32, temperature: float = 0.2,
        trace: str = "") -> list[dict]:
  """Per-task milliseconds of every (sampler, hidden count), their line fits, the host's part."""
  loaded = inference.load(workdir)
  heldout = sampling_speed.heldout_rows(loaded, workdir)
  length = length or 3 * heldout.shape[1] // 4
  if not 2 * max(hidden) <= length <= heldout.shape[1]:
    raise ValueError(f"--length={length} must be within the rows' {heldout.shape[1]} "
                     "tokens and hold twice the largest --hidden")
  config = {"workdir": workdir, "step": int(loaded.step)}
  made = []
  for text in specs:
    spec = cli.parse_spec(text).replace(temperature=temperature)
    warmup = task_rows(heldout, max(hidden), rows, length)  # compiles both shapes, untimed
    time_calls(loaded, warmup[:1], spec, seed=99)
    time_rows(loaded, warmup, spec)
    points = []
    for h in hidden:
      timed = {**time_calls(loaded, task_rows(heldout, h, rows, length), spec, 0),
               "rows_ms": time_rows(loaded, task_rows(heldout, h, rows, length), spec)}
      points.append((h, timed["call_ms"]))
      made.append(records.make("task_overhead", {**cli.spec_settings(spec),
                                                 "hidden": h, "rows": rows, "length": length},
                               timed, config))
    slope, fixed = np.polyfit(*zip(*points), 1)
    made.append(records.make("task_overhead_fit", {**cli.spec_settings(spec),
                                                   "hidden": list(hidden), "length": length},
                             {"fixed_ms": float(fixed), "per_hidden_token_ms": float(slope)},
                             config))
  if trace:
    spec = cli.parse_spec(specs[0]).replace(temperature=temperature)
    with jax.profiler.trace(trace, create_perfetto_trace=True):
      for h in (0, max(hidden)):
        time_calls(loaded, task_rows(heldout, h, 4, length), spec, seed=7)
    trace_summary.keep_perfetto_only(trace)
  row = task_rows(heldout, 1, 1, length)
  arrays = lambda: generation._arrays(row, 1)  # pylint: disable=protected-access
  base = jax.random.key(0)
  names = [f"SingleLine/HumanEval/{i}/L0" for i in range(64)]
  keys = lambda: jax.block_until_ready(generation.row_keys(base, names))
  made.append(records.make(
      "task_overhead_host", {"repeats": 200},
      {"row_keys_ms": per_task_ms(keys, 200) / len(names),
       "arrays_ms": per_task_ms(arrays, 200)},
      config))
  return made
