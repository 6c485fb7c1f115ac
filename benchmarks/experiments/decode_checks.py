"""The decode kernels on one GPU, on random weights (no training): the GPU tests of deterministic
decoding, the attention kernel and every decoder's exactness; profiles of every decoder's
calls; which module first rounds a row differently with the batch; and the greedy agreement of
every exact decoder with deterministic decoding on and off. Issues 35 and 39 read their
figures from it.

  benchmarks/launch.sh experiment decode_checks --runs=/tmp/runs --out="$OUT" --detach=true
  benchmarks/launch.sh experiment decode_checks --runs=/tmp/runs --out="$OUT" --wait=greedy

The stages, most needed first (each command ends by ``timeout_s`` and keeps what it measured):

* ``gpu_tests``: ``pytest`` on ``test_files`` (the GPU image has it), its log the result;
* ``profile``: ``decode_profile`` of ``config``;
* ``greedy``: ``greedy_agreement`` of ``greedy_specs``, ``alone_rows`` rows through one slot,
  for each setting of ``greedy_deterministic`` in turn (deterministic decoding on, then off;
  its records are written as they are measured);
* ``probe``: ``invariance_probe``: which module's output for a row first differs alone and
  among 64 rows, with the setting and without;
* ``profile_det``: ``decode_profile`` of deterministic decoding (``det_specs``): where the
  setting's time goes;
* ``profile_cublas`` and ``profile_graphs``: ``profile`` with
  ``--xla_gpu_enable_triton_gemm=false``, and with every sampling loop recorded as a CUDA graph
  (``ASARM_JAX_COMMAND_BUFFERS=on``); the records carry the settings;
* ``graphs``: :mod:`benchmarks.while_loop_graphs` for ``graphs_specs`` at batch 1 and 64, each
  decoder's fixed cost and cost per token without and with the loop and ``auto``'s
  conditionals as CUDA graphs; ``gpu_tests_graphs``: the exactness tests with them on;
* ``fused``: ``fused_dense`` (the fused dense kernels against XLA's, per part), then
  ``decode_profile`` of ``fused_specs`` at batch 1 with ``model.fused_decoding`` on and off,
  side by side (the records' ``config`` says which).

Estimated at ~40 minutes of H200 time (each command at most ``timeout_s``): more than one
session's 30; a later session runs the stages left (``--stages=...``: a fresh machine has no
``--runs`` of the last).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from asarm_jax.sampling import core
from benchmarks import cli
from benchmarks.experiments import stages
from benchmarks.experiments.stages import Stage

KNOBS = dict(
    config="xlnet_base",
    test_files="tests/test_deterministic.py,tests/test_attention.py,tests/test_exactness.py",
    greedy_specs="assd:5,assd_fused:5,tree:8,auto:8", alone_rows=4, compile_workers=4,
    greedy_deterministic="true,false",
    det_specs="sequential,assd_fused:5,tree:8:6",
    graphs_specs="sequential,assd_fused:5,tree:8,auto:8",
    fused_specs="sequential,assd:5,assd_fused:5",
    timeout_s=540.0)


def build(knobs: dict[str, Any], runs: str) -> list[Stage]:
  """gpu_tests, profile, greedy, probe, profile_det, profile_cublas, profile_graphs, graphs,
  gpu_tests_graphs, fused."""
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
      Stage("greedy", tuple(greedy(cli.flag_bool(setting))
                            for setting in knobs["greedy_deterministic"].split(","))),
      Stage("probe", (timed(stages.benchmark("invariance_probe", runs, config=knobs["config"])),)),
      Stage("profile_det", (timed(stages.benchmark(
          "decode_profile", runs, config=knobs["config"], specs=knobs["det_specs"],
          deterministic=True, compile_workers=knobs["compile_workers"])),)),
      Stage("profile_cublas", (timed(profile, XLA_FLAGS="--xla_gpu_enable_triton_gemm=false"),)),
      Stage("profile_graphs", (timed(profile, **{core.COMMAND_BUFFERS_ENV: "on"}),)),
      Stage("graphs", tuple(timed(stages.benchmark(
          "while_loop_graphs", runs, config=f"configs/{knobs['config']}.py", hidden="0,16,64",
          rows=8, specs=knobs["graphs_specs"], batch=batch)) for batch in (1, 64))),
      Stage("gpu_tests_graphs", (timed(stages.module("pytest", "-q", "tests/test_exactness.py"),
                                       JAX_DEFAULT_MATMUL_PRECISION="highest",
                                       **{core.COMMAND_BUFFERS_ENV: "on"}),)),
      Stage("fused", (timed(stages.benchmark("fused_dense", runs, config=knobs["config"])),
                      *(timed(stages.benchmark(
                          "decode_profile", runs, config=knobs["config"],
                          specs=knobs["fused_specs"], batches="1", fused_decoding=on,
                          compile_workers=knobs["compile_workers"])) for on in (True, False)))),
  ]
