"""The decode kernels on one GPU, on random weights (no training): the GPU tests of deterministic
decoding, the attention kernel and every decoder's exactness; two profiles of every decoder's
calls, with XLA's Triton GEMMs and without; and the greedy agreement of every exact decoder
with deterministic decoding on and off. Issues 35 and 39 read their figures from it.

  benchmarks/launch.sh experiment decode_checks --runs=/tmp/runs --out="$OUT" --detach=true
  benchmarks/launch.sh experiment decode_checks --runs=/tmp/runs --out="$OUT" --wait=greedy

The stages, in order (each ends by ``timeout_s`` and keeps what it measured):

* ``gpu_tests``: ``pytest`` on ``test_files``, its log the result (the checkout's ``.whl`` must
  carry pytest's wheels: docs/benchmarks.md);
* ``profile``: ``decode_profile`` of ``config``; ``profile_cublas``: the same with
  ``--xla_gpu_enable_triton_gemm=false``; ``profile_graphs``: with the sampling loop recorded
  as a CUDA graph (:mod:`benchmarks.while_loop_graphs`' flags, measured at batch 1 only so
  far); the records carry the flags;
* ``probe``: ``invariance_probe``: which module's output for a row first differs alone and
  among 64 rows, with the setting and without;
* ``greedy``: ``greedy_agreement`` of ``greedy_specs``, ``alone_rows`` rows through one slot,
  deterministic decoding on first, then off (its records are written as they are measured).

Estimated at ~30 minutes of H200 time (each command at most ``timeout_s``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from benchmarks import while_loop_graphs
from benchmarks.experiments import stages
from benchmarks.experiments.stages import Stage

KNOBS = dict(
    config="xlnet_base",
    test_files="tests/test_deterministic.py,tests/test_attention.py,tests/test_exactness.py",
    greedy_specs="assd:5,assd_fused:5,tree:8,auto:8", alone_rows=4, compile_workers=4,
    timeout_s=540.0)


def build(knobs: dict[str, Any], runs: str) -> list[Stage]:
  """gpu_tests, profile, profile_cublas, profile_graphs, probe, greedy."""
  timed = lambda command, **env: dataclasses.replace(
      command, env=tuple(env.items()), timeout_s=knobs["timeout_s"])
  profile = stages.benchmark("decode_profile", runs, config=knobs["config"],
                             compile_workers=knobs["compile_workers"])
  greedy = lambda deterministic: timed(stages.benchmark(
      "greedy_agreement", runs, config=knobs["config"], specs=knobs["greedy_specs"],
      alone_rows=knobs["alone_rows"], deterministic=deterministic,
      compile_workers=knobs["compile_workers"]))
  return [
      Stage("gpu_tests", (timed(stages.module("pytest", "-q", *knobs["test_files"].split(",")),
                                JAX_DEFAULT_MATMUL_PRECISION="highest"),)),
      Stage("profile", (timed(profile),)),
      Stage("profile_cublas", (timed(profile, XLA_FLAGS="--xla_gpu_enable_triton_gemm=false"),)),
      Stage("profile_graphs", (timed(profile, XLA_FLAGS=while_loop_graphs.XLA_FLAGS["graphs"]),)),
      Stage("probe", (timed(stages.benchmark("invariance_probe", runs, config=knobs["config"])),)),
      Stage("greedy", (greedy(True), greedy(False))),
  ]
