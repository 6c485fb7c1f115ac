"""Where a batch-1 infilling task's time goes: the fixed cost of a sampler invocation (not a test).

  python benchmarks/task_overhead.py --workdir=runs/causal --out=DIR

HumanEval single-line at batch 1 (``docs/results.md``, run 3) costs about 7 ms per task beyond
its network calls, half of sequential decoding's time; this splits it. Rows are held-out rows of
the checkpoint's corpus (those of ``sampling_speed.py``), ``--length`` real tokens (default:
three quarters of ``seq_len``, 384 of 512) with ``h`` hidden ones from position ``length // 2``
(the rest visible, like an infilling prompt), for h in ``--hidden``. Any checkpoint of the same
architecture will do: the number of calls of sequential decoding is h whatever the weights. For
every method of ``--methods`` and every h, ``--rows`` rows are decoded one at a time after an
untimed compiling call, and per task:

* ``dispatch_ms``: until ``sampling.generate`` returns (argument checks, the compilation cache's
  key, the launch; where JAX dispatches asynchronously, not the device's work, but on the GPU
  a sampler's ``lax.while_loop`` keeps it until the loop ends: ``docs/results.md``);
* ``call_ms``: until its result is ready, tasks one after another with nothing overlapped;
* ``rows_ms``: ``generation.generate_rows`` at batch 1, the evaluation's loop (each task
  dispatched before the previous one is pulled and written).

and the host's pieces alone: ``batch_key_ms`` (a batch's random key) and ``arrays_ms`` (a
batch's padded arrays). A straight line through ``call_ms`` against h gives each method's fixed
cost and its cost per hidden token. Writes DIR/task_overhead.json and prints a table. With
``--trace``, a profiler trace of 8 tasks of the first method, h = 0 then the largest h, is
written under DIR/trace as Perfetto JSON: the host's and the device's timelines.
"""
import datetime
import json
import os
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

import sampling_speed
from asarm_jax import inference, sampling
from asarm_jax.evaluation import generation

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["sequential:1", "assd_fused:5", "tree:8"], "method:k pairs.")
flags.DEFINE_list("hidden", ["0", "1", "4", "16"], "Hidden tokens per row.")
flags.DEFINE_integer("length", 0, "Real tokens per row (the rest of seq_len is padding); "
                     "0: three quarters of seq_len.")
flags.DEFINE_integer("rows", 32, "Timed rows per (method, hidden).")
flags.DEFINE_float("temperature", 0.2, "Sampling temperature.")
flags.DEFINE_bool("trace", False, "Also write a profiler trace of a few tasks.")


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


def time_calls(loaded, rows, method: str, k: int, seed: int) -> dict:
  """Median dispatch and call milliseconds of ``rows`` decoded one at a time, and their calls."""
  dispatch, total, calls = [], [], 0
  for i, row in enumerate(rows):
    tokens, visible, length = generation._batch_arrays([row], 1)
    start = time.perf_counter()
    out = sampling.generate(loaded.model, loaded.params, tokens, visible,
                            jax.random.key(seed + i), method=method, k=k,
                            temperature=FLAGS.temperature, length_B=length, depth=FLAGS.depth,
                            ngram=FLAGS.ngram)
    dispatch.append(time.perf_counter() - start)
    calls += int(jax.device_get(out.num_calls_B)[0])
    total.append(time.perf_counter() - start)
  return {"dispatch_ms": 1e3 * float(np.median(dispatch)),
          "call_ms": 1e3 * float(np.median(total)), "calls_per_task": calls / len(rows)}


def time_rows(loaded, rows, method: str, k: int) -> float:
  """Milliseconds per task of ``generation.generate_rows`` at batch 1 (a fresh cache file)."""
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    generation.generate_rows(loaded.model, loaded.params, rows, os.path.join(tmp, "rows.jsonl"),
                             method=method, k=k, temperature=FLAGS.temperature, batch_size=1,
                             seed=0, desc=f"{method}:{k}", depth=FLAGS.depth, ngram=FLAGS.ngram)
    return 1e3 * (time.perf_counter() - start) / len(rows)


def main(_):
  loaded = inference.load(FLAGS.workdir)
  heldout = sampling_speed.heldout_rows(loaded, FLAGS.workdir)
  hidden = [int(h) for h in FLAGS.hidden]
  length = FLAGS.length or 3 * heldout.shape[1] // 4
  if not 2 * max(hidden) <= length <= heldout.shape[1]:
    raise app.UsageError(f"--length={length} must be within the rows' {heldout.shape[1]} "
                         "tokens and hold twice the largest --hidden")
  results, fits = [], {}
  for spec in FLAGS.methods:
    method, k = spec.split(":")
    k = int(k)
    warmup = task_rows(heldout, max(hidden), 1, length)  # compiles, untimed
    time_calls(loaded, warmup, method, k, seed=99)
    time_rows(loaded, warmup, method, k)
    for h in hidden:
      rows = task_rows(heldout, h, FLAGS.rows, length)
      result = {"method": method, "k": k, "hidden": h, **time_calls(loaded, rows, method, k, 0),
                "rows_ms": time_rows(loaded, rows, method, k)}
      print(json.dumps(result), flush=True)
      results.append(result)
    points = [(r["hidden"], r["call_ms"]) for r in results if r["method"] == method]
    slope, fixed = np.polyfit(*zip(*points), 1)
    fits[spec] = {"fixed_ms": float(fixed), "per_hidden_token_ms": float(slope)}
  if FLAGS.trace:
    method, k = FLAGS.methods[0].split(":")
    trace_dir = os.path.join(FLAGS.out, "trace")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for h in (0, max(hidden)):
        time_calls(loaded, task_rows(heldout, h, 4, length), method, int(k), seed=7)
    for folder, _, files in os.walk(trace_dir):  # the same timelines in bulkier formats
      for name in files:
        if name != "perfetto_trace.json.gz":
          os.remove(os.path.join(folder, name))
  row = task_rows(heldout, 1, 1, length)
  base = jax.random.key(0)
  report = {
      "date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
      "workdir": FLAGS.workdir, "step": int(loaded.step), "length": length,
      "temperature": FLAGS.temperature, "results": results, "fits": fits,
      "batch_key_ms": per_task_ms(
          lambda: jax.block_until_ready(generation.batch_key(base, "SingleLine/HumanEval/0/L0")),
          200),
      "arrays_ms": per_task_ms(lambda: generation._batch_arrays(row, 1), 200)}
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "task_overhead.json"), "w") as f:
    json.dump(report, f, indent=1)
  print("| method | hidden | calls | dispatch | call | generate_rows |")
  print("|---|---|---|---|---|---|")
  for r in results:
    print(f"| {r['method']}:{r['k']} | {r['hidden']} | {r['calls_per_task']:.1f} | "
          f"{r['dispatch_ms']:.2f} ms | {r['call_ms']:.2f} ms | {r['rows_ms']:.2f} ms |")
  for spec, fit in fits.items():
    print(f"{spec}: fixed {fit['fixed_ms']:.2f} ms + {fit['per_hidden_token_ms']:.3f} ms per "
          "hidden token")
  print(f"batch key {report['batch_key_ms']:.3f} ms, arrays {report['arrays_ms']:.3f} ms")


if __name__ == "__main__":
  app.run(main)
