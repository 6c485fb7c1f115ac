"""The masked-diffusion baseline at equal compute: an AS-ARM and an MDLM (``objective.kind=
"mdlm"``, ``docs/mdlm.md``) of the same network, data, recipe and batches, trained the same
number of steps in one session, then evaluated side by side.

  python -m benchmarks experiment mdlm_baseline --runs=/tmp/runs --out=$OUT --detach=true

Both run by steps (``train.stop_step``), not by time: the two-stream network costs the same
step for either objective, so equal steps is equal compute whatever else shares the GPU. The
AS-ARM's last ``draft_steps`` add the draft term (the headline recipe's late phase). Stages:
``prepare``; ``asarm`` and ``mdlm`` (training); ``asarm_density`` (exact held-out bits and
draft acceptance) and ``mdlm_density`` (the ELBO bound, ``mdlm_elbo``, at the same visible
fractions); ``asarm_single_line``/``asarm_multi_line`` (HumanEval at T=0.2 with the exact
decoders of ``asarm_specs``, their calls measured) and ``mdlm_single_line``/
``mdlm_multi_line`` (``specs``: the MDLM at calls = tokens, tokens/2 and tokens/4), the middles
for a CPU machine to score; ``asarm_gen``/``mdlm_gen`` (generation-quality samples, the AS-ARM's
exact decoders and the MDLM at the same three numbers of calls, for the causal LM of
``causal_lm`` to judge). Estimated at ~1500 s of H100 time, run as one detached run, or at
~1300 s with the AS-ARM's evaluations in a second detached run beside the MDLM's training
(``docs/mdlm.md``).
"""
from __future__ import annotations

from typing import Any

from asarm_jax.sampling.spec import SamplerSpec
from benchmarks import cli
from benchmarks.experiments import stages, training
from benchmarks.experiments.headline import KNOBS as HEADLINE
from benchmarks.experiments.stages import Stage

KNOBS = dict({k: HEADLINE[k] for k in ("model", "attention", "max_files", "lr", "batch",
                                       "fractions", "draft_weight", "max_tasks")},
             steps=2400, draft_steps=480,  # ~330 s each on an H100 (~7.3 steps/s)
             execute=False, specs="mdlm:1,mdlm:2,mdlm:4", asarm_specs="sequential,assd:5,tree:8",
             gen_methods="sequential,assd,tree")

MDLM = {"objective.kind": "mdlm"}


def eval_files(workdir: str) -> tuple[str, ...]:
  return (f"{workdir}/eval/*_middles.json", f"{workdir}/eval/*_completions.jsonl",
          f"{workdir}/eval/results.json")


def humaneval(knobs: dict[str, Any], runs: str, workdir: str, specs: str, kind: str) -> Stage:
  """HumanEval ``kind`` at T=0.2 on RUNS/WORKDIR, 64 slots, one run per spec."""
  return Stage(f"{workdir}_{kind.removeprefix('humaneval_')}", (stages.benchmark(
      "humaneval", runs, workdir=f"{runs}/{workdir}", specs=specs, kind=kind, temperature=0.2,
      batch_size=64, max_tasks=knobs["max_tasks"], execute=knobs["execute"]),),
      eval_files(workdir))


def gen(knobs: dict[str, Any], runs: str, workdir: str, spec: SamplerSpec, methods: tuple[str, ...],
        ks: tuple[int, ...] = (), **extra: Any) -> Stage:
  """Generation-quality samples of RUNS/WORKDIR, written for a judge."""
  return Stage(f"{workdir}_gen", (training.evaluate(
      knobs, runs, workdir, ("gen_quality",), spec, **extra, **{
          "eval.gen_samples_only": True, "eval.gen_num_prompts": 64, "eval.gen_methods": methods,
          **({"eval.gen_parallel_ks": ks} if ks else {})}),),
      (f"{workdir}/eval/gen_samples_*.npz", f"{workdir}/eval/results.json"))


def build(knobs: dict[str, Any], runs: str) -> list[Stage]:
  """prepare, asarm, mdlm, then each model's density, single_line, multi_line and gen."""
  steps = knobs["steps"]
  ks = tuple(int(text.split(":")[1]) for text in knobs["specs"].split(","))
  mdlm_spec = cli.parse_spec("mdlm:1")
  return [
      Stage("prepare", (training.prepare(knobs, runs),)),
      Stage("asarm", (
          training.train(knobs, runs, "asarm", 0, steps,
                         **{"train.stop_step": steps - knobs["draft_steps"]}),
          training.train(knobs, runs, "asarm", 0, steps,
                         **{"objective.draft_weight": knobs["draft_weight"]}))),
      Stage("mdlm", (training.train(knobs, runs, "mdlm", 0, steps, **MDLM),)),
      Stage("asarm_density", (training.evaluate(
          knobs, runs, "asarm", ("density", "draft_acceptance"), SamplerSpec()),),
            eval_files("asarm")),
      Stage("mdlm_density", (training.evaluate(
          knobs, runs, "mdlm", ("density",), mdlm_spec, **MDLM),), eval_files("mdlm")),
      humaneval(knobs, runs, "asarm", knobs["asarm_specs"], "humaneval_single_line"),
      humaneval(knobs, runs, "mdlm", knobs["specs"], "humaneval_single_line"),
      humaneval(knobs, runs, "asarm", knobs["asarm_specs"], "humaneval_multi_line"),
      humaneval(knobs, runs, "mdlm", knobs["specs"], "humaneval_multi_line"),
      gen(knobs, runs, "asarm", SamplerSpec(), tuple(knobs["gen_methods"].split(","))),
      gen(knobs, runs, "mdlm", mdlm_spec, ("mdlm",), ks, **MDLM),
  ]
