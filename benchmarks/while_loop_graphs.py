"""Every decoder's cost with and without XLA command buffers for loops and conditionals.

  python -m benchmarks while_loop_graphs --config=configs/xlnet_base.py \
      [--specs=sequential,assd_fused:5,tree:8,auto:8] [--batch=1] [--variants=off,on]

On a GPU, XLA runs a ``lax.while_loop`` from the host: every iteration copies the loop
predicate to the host and launches the body's kernels one by one, so a batch-1 sampler is
bound by the host (:mod:`benchmarks.task_overhead` with ``--trace`` on the H200: the GPU busy
25% of the traced tasks). With command buffers for WHILE and CONDITIONAL
(``sampling.core.COMMAND_BUFFER_OPTIONS``) the loop is recorded as one CUDA graph with
conditional nodes and runs on the device; so is the ``lax.switch`` of ``auto``'s draft sizes,
whose branch index the host otherwise reads back in every round. ``sampling.generate``
compiles its loop so where they were measured to help (``sampling.core.command_buffers``).
Each variant runs in a fresh process with ``$ASARM_JAX_COMMAND_BUFFERS`` set to it: ``off``,
``on`` or ``measured`` (that rule). It decodes ``--rows`` dispatches of ``--batch`` rows of
random tokens, ``h`` hidden from the middle for h in ``--hidden``, with a randomly
initialised model of ``--config``, with each sampler of ``--specs`` (random weights: a
drafting decoder's acceptance is not a trained model's, but its calls are the same in every
variant). One record per (variant, spec): the median milliseconds per dispatch at each h,
the fitted fixed cost and cost per hidden token, the network calls, and whether its tokens
equal the first variant's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from asarm_jax import models, sampling, train
from asarm_jax.config_base import from_file
from asarm_jax.sampling import core
from benchmarks import cli, records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", default="configs/xlnet_base.py",
                      help="config file whose model is timed")
  parser.add_argument("--hidden", type=cli.list_of(int), default="0,16,64",
                      help="hidden tokens per row")
  parser.add_argument("--rows", type=int, default=16, help="timed rows per h")
  parser.add_argument("--variants", type=cli.list_of(str), default="off,on",
                      help="$ASARM_JAX_COMMAND_BUFFERS of each: off, on or measured")
  parser.add_argument("--specs", type=cli.list_of(str), default="sequential",
                      help="samplers to time (benchmarks.cli.parse_spec)")
  parser.add_argument("--batch", type=int, default=1, help="rows per dispatch")


def time_variant(config_path: str, hidden: list[int], rows: int, specs: list[str],
                 batch: int) -> dict:
  """Per spec and h: median ms per dispatch of ``batch`` rows, the network calls and the
  generated tokens (this process's ``$ASARM_JAX_COMMAND_BUFFERS``)."""
  config = from_file(config_path)
  model = models.build(config.model)
  seq_len = config.data.seq_len
  params = train.init_params(model, jax.random.key(0), seq_len)
  results = {}
  for text in specs:
    spec = cli.parse_spec(text).replace(temperature=1.0)
    rs = np.random.default_rng(0)
    results[text] = {}
    for h in hidden:
      tokens = rs.integers(4, config.data.vocab_size, (rows + 1, batch, seq_len), dtype=np.int32)
      visible = np.ones((batch, seq_len), bool)
      visible[:, seq_len // 2:seq_len // 2 + h] = False
      times, generated, calls = [], [], []
      for i in range(rows + 1):  # the first compiles, untimed
        start = time.perf_counter()
        out = sampling.generate(model, params, tokens[i], visible, jax.random.key(i), spec=spec)
        generated.append(np.asarray(jax.device_get(out.tokens_BxL))[~visible].tolist())
        times.append(time.perf_counter() - start)
        calls.append(int(out.num_network_calls))
      results[text][h] = {"ms": 1e3 * float(np.median(times[1:])), "tokens": generated[1:],
                          "calls": float(np.mean(calls[1:]))}
  return results


def run(config: str = "configs/xlnet_base.py", hidden: list[int] = (0, 4), rows: int = 16,
        variants: list[str] = ("off", "on"), specs: list[str] = ("sequential",),
        batch: int = 1) -> list[dict]:
  """One record per (variant, spec), each variant timed in a child process with
  ``$ASARM_JAX_COMMAND_BUFFERS`` set to it."""
  made, first_tokens = [], {}
  for variant in variants:
    env = dict(os.environ, **{core.COMMAND_BUFFERS_ENV: variant})
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.while_loop_graphs", config,
         ",".join(map(str, hidden)), str(rows), ",".join(specs), str(batch)], env=env,
        capture_output=True, text=True, check=False)
    settings = {"variant": variant, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "hidden": list(hidden), "rows": rows, "batch": batch}
    if proc.returncode:
      print(f"{variant}: failed\n{proc.stderr[-3000:]}", flush=True)
      made.append(records.make("while_loop_graphs", settings, {"error": proc.stderr[-3000:]},
                               {"file": config}))
      continue
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    for spec, by_h in child.items():
      points = [(int(h), r["ms"]) for h, r in by_h.items()]
      slope, fixed = np.polyfit(*zip(*points), 1)
      tokens = {h: r["tokens"] for h, r in by_h.items()}
      first = first_tokens.setdefault(spec, tokens)
      made.append(records.make(
          "while_loop_graphs", {**settings, "spec": spec},
          {"fixed_ms": float(fixed), "per_hidden_token_ms": float(slope),
           "ms": {h: r["ms"] for h, r in by_h.items()},
           "calls": {h: r["calls"] for h, r in by_h.items()},
           "same_tokens_as_first": tokens == first}, {"file": config}))
  return made


if __name__ == "__main__":  # the child of run(): CONFIG HIDDEN ROWS SPECS BATCH -> one JSON line
  print(json.dumps(time_variant(sys.argv[1], cli.list_of(int)(sys.argv[2]), int(sys.argv[3]),
                                cli.list_of(str)(sys.argv[4]), int(sys.argv[5]))))
