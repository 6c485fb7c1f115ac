"""The causal LM of equal compute for the headline AS-ARM: the same model, data, recipe, batches
and time limit, trained left to right with nothing visible (``configs/judge.py``); it is also
the judge of the headline's generation-quality samples.

  python -m benchmarks experiment causal_lm --runs=/tmp/runs --out=$OUT --detach=true \
      --set samples=$PWD/docs/archive/results/run3_2026-12-03/gen_samples_step7650_t1_f0.05_seed0_b64.npz

Stages: ``prepare``; ``causal`` (training); ``density`` (held-out bits and the prefix-only
single-line tasks, sequential at T=0.2); ``judged`` (samples judged, where ``samples`` names
their files, comma-separated: the headline's, or ``mdlm_baseline``'s two); ``greedy``
(single-line at T=0 with sequential and a tree at batch 64 and batch 1: every exact decoder must
give the same middles); ``overhead`` (the fixed cost of a
batch-1 task, with a profiler trace). Estimated at ~1500 s of H200 time.
"""
from __future__ import annotations

import os
from typing import Any

from benchmarks import cli
from benchmarks.experiments import stages, training
from benchmarks.experiments.headline import KNOBS as HEADLINE
from benchmarks.experiments.stages import Stage

KNOBS = dict({k: HEADLINE[k] for k in ("model", "attention", "max_files", "lr", "batch",
                                       "fractions", "limit_s", "steps", "max_tasks")},
             execute=False, samples="")

EVAL_FILES = ("causal/eval/*_middles.json", "causal/eval/*_scores.jsonl",
              "causal/eval/results.json")


def build(knobs: dict[str, Any], runs: str) -> list[Stage]:
  """prepare, causal, density, judged (with ``samples``), greedy, overhead."""
  greedy = tuple(stages.benchmark(
      "humaneval", runs, workdir=f"{runs}/causal", specs="sequential,tree:8",
      kind="humaneval_single_line", temperature=0.0, batch_size=batch,
      max_tasks=knobs["max_tasks"], execute=False) for batch in (64, 1))
  built = [
      Stage("prepare", (training.prepare(knobs, runs),)),
      Stage("causal", (training.train(knobs, runs, "causal", knobs["limit_s"], knobs["steps"],
                                      causal=True),)),
      Stage("density", (training.evaluate(
          knobs, runs, "causal", ("density", "humaneval_single_line_prefix"),
          cli.parse_spec("sequential").replace(temperature=0.2), causal=True),), EVAL_FILES),
  ]
  if knobs["samples"]:
    files = knobs["samples"].split(",")
    stems = [os.path.splitext(path)[0] for path in files]
    built.append(Stage("judged", (stages.module(
        "asarm_jax.evaluation.judge_samples", f"--judge={runs}/causal", *files),),
        tuple(f"{stem}_judged.{ext}" for stem in stems for ext in ("json", "png"))))
  return built + [
      Stage("greedy", greedy, EVAL_FILES),
      Stage("overhead", (stages.benchmark("task_overhead", runs, workdir=f"{runs}/causal",
                                          trace=f"{runs}/out/overhead/trace"),)),
  ]
