"""Where device time goes: one training step and sampling calls, by part of the model (not a test).

  python benchmarks/profile_step.py --config=xlnet_base --out=DIR [--attention_impl=cudnn]
      [--train_step=false --calls=1:1,1:36]

Runs the real jitted train step (``benchmarks/train_throughput.py``'s setup) and the cached
sampling call (``benchmarks/call_cost.py``) under the JAX profiler. Every GPU kernel of the
trace is mapped to the HLO instruction it ran and that instruction's source scope (flax module
paths with ``flax_profile``, plus the named scopes ``alibi``, ``rotary``, ``attend``,
``log_probs`` and ``optimizer``), and device time is summed per part, forward and backward
apart. Writes DIR/profile.json (parts and the top kernels) and prints markdown tables.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile

import flax
import jax
import numpy as np
from absl import app, flags

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "xlnet_base", "configs/ name.")
flags.DEFINE_string("attention_impl", "", "Override model.attention_impl.")
flags.DEFINE_bool("train_step", True, "Profile the training step (before the calls).")
flags.DEFINE_list("calls", ["1:1", "1:36", "64:1", "64:36"], "Sampling calls (batch:rows).")
flags.DEFINE_string("out", ".", "Output directory.")

# (part, regex over the op_name scope), first match wins.
PARTS = (("optimizer", r"/optimizer"),
         ("head + embeddings", r"embed\.attend|/head/|/embed/|/position_embed/"),
         ("attention core", r"/attend(/|$)"),
         ("ALiBi bias", r"alibi"),
         ("RoPE", r"rotary"),
         ("q/k/v/o projections", r"/attention/(query|key|value|out)/"),
         ("MLP matmuls", r"/mlp_(in|out)/"),
         ("LayerNorm", r"/ln_"),
         ("log-softmax + loss", r"log_probs"),
         ("rest of the blocks (residual, GELU, sink, cache writes)", r"/block_\d+/"),
         ("masks, gathers, sampling, other", r""))


def hlo_scopes(compiled_text: str) -> dict[str, str]:
  """HLO instruction name -> its ``op_name`` metadata (source scope)."""
  scopes = {}
  for line in compiled_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*op_name=\"([^\"]*)\"", line)
    if m:
      scopes[m.group(1)] = scopes[m.group(1).replace(".", "_")] = m.group(2)
  return scopes


# Library kernels (cuBLAS, cuDNN, Pallas) carry no scope: their names say what they are.
KERNEL_PARTS = (("attention core", r"cudnn|fmha|_forward_kernel|_dq_kernel|_dkv_kernel"),
                ("matmuls (cuBLAS: projections, MLP, head)", r"nvjet|gemm|cutlass|xmma"),
                ("copies", r"memcpy|memset"))


def part_of(scope: str, kernel: str = "") -> str:
  if not scope:
    for name, pattern in KERNEL_PARTS:
      if re.search(pattern, kernel):
        return name
  return next(name for name, pattern in PARTS if re.search(pattern, scope))


def gpu_kernels(fn, args, runs: int) -> list[dict]:
  """Runs ``fn(*args)`` ``runs`` times under the profiler; its GPU kernels (CPU thunks without
  a GPU), as perfetto trace events with ``dur`` (us) and ``args.hlo_op``."""
  log_dir = tempfile.mkdtemp()
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    for _ in range(runs):
      out = fn(*args)
      args = out[0:1] + args[1:] if isinstance(out, tuple) else args  # the train state
    jax.block_until_ready(out)
  path = glob.glob(os.path.join(log_dir, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  gpu_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
              and re.search(r"GPU|gpu|device:", str(e.get("args", {}).get("name", "")))}
  ops = [e for e in events if e.get("ph") == "X" and "dur" in e and "hlo_op" in e.get("args", {})]
  on_gpu = [e for e in ops if e["pid"] in gpu_pids]
  return on_gpu or ops  # without a GPU: the CPU's thunks


def breakdown(kernels: list[dict], scopes: dict[str, str], runs: int) -> dict:
  """Device ms per run by part (forward / backward), and the top kernels."""
  parts = collections.defaultdict(float)
  top = collections.defaultdict(float)
  unmapped = 0.0
  for e in kernels:
    args = e.get("args", {})
    hlo = args["hlo_op"]
    # Inside a command buffer (a CUDA graph) hlo_op names the buffer; the kernel's own name
    # is its fusion's (dots as underscores), and tf_op, when set, its source scope.
    tf_op = args.get("tf_op", "")
    scope = next((scopes[n] for n in (e["name"], tf_op, tf_op.split(":")[0], hlo) if n in scopes),
                 tf_op if "/" in tf_op else "")
    if not scope:
      unmapped += e["dur"]
    direction = ("backward" if "transpose(" in scope else "forward" if scope else
                 "both")  # a library kernel's direction is not recorded
    parts[f"{part_of(scope, e['name'])} | {direction}"] += e["dur"] / 1e3 / runs
    top[(e["name"][:80], hlo, scope[-120:])] += e["dur"] / 1e3 / runs
  total = sum(parts.values())
  return {"device_ms": total, "unmapped_ms": unmapped / 1e3 / runs,
          "parts": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
          "top_kernels": [{"kernel": k[0], "hlo": k[1], "scope": k[2], "ms": v}
                          for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:40]],
          "arg_keys": sorted({key for e in kernels for key in e.get("args", {})})}


def print_table(title: str, result: dict) -> None:
  print(f"\n### {title}: {result['device_ms']:.2f} ms of kernels per run "
        f"({result['unmapped_ms']:.2f} ms unmapped)\n\n| part | direction | ms | share |\n"
        "|---|---|---|---|")
  for key, ms in result["parts"].items():
    part, direction = key.split(" | ")
    print(f"| {part} | {direction} | {ms:.3f} | {100 * ms / result['device_ms']:.1f}% |")


def profile_train_step(impl: str | None, results: dict) -> None:
  config, step, state, tokens, rng = common.train_setup(FLAGS.config, attention_impl=impl)
  step = step.lower(state, tokens, rng).compile()  # one compile: its HLO is what runs
  scopes = hlo_scopes(step.as_text())
  for _ in range(3):
    state, _ = step(state, tokens, rng)
  kernels = gpu_kernels(step, (state, tokens, rng), runs=3)
  results["train_step"] = breakdown(kernels, scopes, runs=3)
  print_table(f"train step, {FLAGS.config}, batch {config.train.batch_size}",
              results["train_step"])
  save(results)


def main(_):
  flax.config.update("flax_profile", True)  # module paths in op_name
  results = {}
  impl = FLAGS.attention_impl or None
  if FLAGS.train_step:
    profile_train_step(impl, results)
  config = common.config_of(FLAGS.config, attention_impl=impl)
  for shape in FLAGS.calls:
    batch, rows = map(int, shape.split(":"))
    loop, args = common.call_setup(config, batch, rows, calls=50)
    loop = loop.lower(*args).compile()
    scopes = hlo_scopes(loop.as_text())
    jax.block_until_ready(loop(*args))
    kernels = gpu_kernels(loop, args, runs=1)
    result = breakdown(kernels, scopes, runs=50)
    result["kernels_per_call"] = len(kernels) / 50
    results[f"call_b{batch}_r{rows}"] = result
    print_table(f"sampling call, batch {batch}, {rows} query rows "
                f"({result['kernels_per_call']:.0f} kernels per call)", result)
    save(results)


def save(results: dict) -> None:
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "profile.json"), "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
