"""The masked-diffusion baseline of equal compute for the headline AS-ARM: the same model, data,
recipe, batches and time limit, trained with ``objective.kind="mdlm"`` (``docs/mdlm.md``), then
evaluated as the AS-ARM is, with its sampler at calls = tokens, tokens/2 and tokens/4.

  python -m benchmarks experiment mdlm_baseline --runs=/tmp/runs --out=$OUT --detach=true

Stages: ``prepare``; ``mdlm`` (training); ``density`` (the held-out ELBO bound, ``mdlm_elbo``,
beside which the headline's AS-ARM reports exact bits); ``single_line`` and ``multi_line``
(HumanEval at T=0.2 with ``mdlm:1,mdlm:2,mdlm:4``, the middles for a CPU machine to score, to
set beside the headline's exact decoders at their measured calls); ``gen`` (generation-quality
samples at the same three numbers of calls, for the causal LM of ``causal_lm`` to judge).
Estimated at ~1500 s of H200 time.
"""
from __future__ import annotations

from typing import Any

from benchmarks import cli
from benchmarks.experiments import stages, training
from benchmarks.experiments.headline import KNOBS as HEADLINE
from benchmarks.experiments.stages import Stage

KNOBS = dict({k: HEADLINE[k] for k in ("model", "attention", "max_files", "lr", "batch",
                                       "limit_s", "steps", "max_tasks")},
             fractions=(0.0, 0.0), execute=False, specs="mdlm:1,mdlm:2,mdlm:4")

MDLM = {"objective.kind": "mdlm"}
EVAL_FILES = ("mdlm/eval/*_middles.json", "mdlm/eval/*_completions.jsonl",
              "mdlm/eval/results.json")


def humaneval(knobs: dict[str, Any], runs: str, kind: str) -> stages.Command:
  return stages.benchmark("humaneval", runs, workdir=f"{runs}/mdlm", specs=knobs["specs"],
                          kind=kind, temperature=0.2, batch_size=64,
                          max_tasks=knobs["max_tasks"], execute=knobs["execute"])


def build(knobs: dict[str, Any], runs: str) -> list[Stage]:
  """prepare, mdlm, density, single_line, multi_line, gen."""
  ks = tuple(int(text.split(":")[1]) for text in knobs["specs"].split(","))
  return [
      Stage("prepare", (training.prepare(knobs, runs),)),
      Stage("mdlm", (training.train(knobs, runs, "mdlm", knobs["limit_s"], knobs["steps"],
                                    **MDLM),)),
      Stage("density", (training.evaluate(
          knobs, runs, "mdlm", ("density",), cli.parse_spec("mdlm:1"), **MDLM),), EVAL_FILES),
      Stage("single_line", (humaneval(knobs, runs, "humaneval_single_line"),), EVAL_FILES),
      Stage("multi_line", (humaneval(knobs, runs, "humaneval_multi_line"),), EVAL_FILES),
      Stage("gen", (training.evaluate(
          knobs, runs, "mdlm", ("gen_quality",), cli.parse_spec("mdlm:1"), **MDLM, **{
              "eval.gen_samples_only": True, "eval.gen_num_prompts": 64,
              "eval.gen_methods": ("mdlm",), "eval.gen_parallel_ks": ks}),),
            ("mdlm/eval/gen_samples_*.npz", "mdlm/eval/results.json")),
  ]
