"""Where device time goes: one training step and sampling calls, by part of the model.

  python -m benchmarks profile_step --config=xlnet_base [--attention_impl=cudnn] \
      [--train_step=false --calls=1:1,1:36]

Runs the real jitted train step (:mod:`benchmarks.train_throughput`'s setup) and the cached
sampling call (:mod:`benchmarks.call_cost`) under the JAX profiler. Every GPU kernel of the
trace is mapped to the HLO instruction it ran and that instruction's source scope (flax module
paths with ``flax_profile``, plus the named scopes ``alibi``, ``rotary``, ``attend``,
``log_probs`` and ``optimizer``), and device time is summed per part, forward and backward
apart. One record per profiled program (``train_step``, ``call_bB_rR``): device ms per part
and the top kernels.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

import flax
import jax

from benchmarks import cli, common, records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", default="xlnet_base", help="configs/ name")
  parser.add_argument("--attention_impl", default="", help="override model.attention_impl")
  parser.add_argument("--train_step", type=cli.flag_bool, default=True,
                      help="profile the training step (before the calls)")
  parser.add_argument("--calls", type=cli.list_of(cli.pair), default="1:1,1:36,64:1,64:36",
                      help="sampling calls (batch:rows)")

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


def profile_train_step(config_name: str, impl: str | None) -> dict:
  """The breakdown of 3 runs of the real train step."""
  _, step, state, tokens, rng = common.train_setup(config_name, attention_impl=impl)
  step = step.lower(state, tokens, rng).compile()  # one compile: its HLO is what runs
  scopes = hlo_scopes(step.as_text())
  for _ in range(3):
    state, _ = step(state, tokens, rng)
  return breakdown(gpu_kernels(step, (state, tokens, rng), runs=3), scopes, runs=3)


def profile_calls(config, batch: int, rows: int, calls: int = 50) -> dict:
  """The breakdown of ``calls`` cached sampling calls of ``rows`` query rows, per call."""
  loop, args = common.call_setup(config, batch, rows, calls=calls)
  loop = loop.lower(*args).compile()
  scopes = hlo_scopes(loop.as_text())
  jax.block_until_ready(loop(*args))
  kernels = gpu_kernels(loop, args, runs=1)
  return {**breakdown(kernels, scopes, runs=calls), "kernels_per_call": len(kernels) / calls}


def run(config: str = "xlnet_base", attention_impl: str = "", train_step: bool = True,
        calls: list[tuple[int, int]] = ((1, 1),)) -> list[dict]:
  """One record per profiled program: the train step (``train_step``) and each call shape."""
  flax.config.update("flax_profile", True)  # module paths in op_name
  impl = attention_impl or None
  model = common.config_of(config, attention_impl=impl)
  described = common.model_config(config, attention_impl=model.model.attention_impl)
  made = []
  if train_step:
    made.append(records.make("profile_step", {"program": "train_step",
                                              "batch": model.train.batch_size},
                             profile_train_step(config, impl), described))
  for batch, rows in calls:
    made.append(records.make("profile_step", {"program": "call", "batch": batch, "rows": rows,
                                              "calls": 50},
                             profile_calls(model, batch, rows), described))
  return made
