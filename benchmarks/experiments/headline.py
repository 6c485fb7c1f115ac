"""The headline AS-ARM: the strongest model one 30-minute device session trains, with every
HumanEval stage, each exact decoder timed at batch 64 and at batch 1.

  python -m benchmarks experiment headline --runs=/tmp/runs --out=$OUT --detach=true

The defaults are those of 2026-12-03's headline (docs/results.md): 1050 s of training, the last
210 with the draft term; the HumanEval tests left to a CPU machine (``execute=False``:
``python -m asarm_jax.evaluation.score_middles`` on the packed middles, then
``python -m benchmarks decoders``); the generation-quality samples kept for the causal LM of
the ``causal_lm`` experiment to judge. ``cost_model`` measures ``auto``'s cost on this machine
before the timed stages, which run ``auto:8`` beside the static decoders, each with continuous
and plain batching; ``greedy`` counts the rows whose tokens differ between decoders and call
shapes, by default and with deterministic decoding, and times both (``alone_rows`` rows through
one slot). Estimated at ~2100 s of H200 time (more than one 30-minute session: the stages
resume).
"""
from __future__ import annotations

from typing import Any

from benchmarks import cli
from benchmarks.experiments import stages, training
from benchmarks.experiments.stages import Stage

KNOBS = dict(
    model="xlnet_base", attention="pallas", max_files=20000,
    lr=1.2e-3, batch=64, fractions=(0.01, 0.6),  # the recipe experiment's winner
    limit_s=1050, steps=7650,  # the schedule ends near the time limit (~7.3 steps/s)
    draft_s=210, draft_weight=0.25,  # the last draft_s seconds add the draft term
    specs_b64="sequential,auto:8,assd:5,assd_fused:5,tree:4:2",  # timed at T=0.2, batch 64
    specs_b1="sequential,auto:8,assd_fused:5,tree:8",  # timed at T=0.2, batch 1
    spec="sequential",  # the later HumanEval stages (the fastest at batch 64 on 2026-12-03)
    batching="continuous,batches",  # the single-line T=0.2 stages, side by side
    execute=False, max_tasks=0, sampling_budget_s=60,
    greedy_specs="assd:5,assd_fused:5,tree:8,auto:8", alone_rows=16)

EVAL_FILES = ("asarm/eval/*_middles.json", "asarm/eval/*_scores.jsonl",
              "asarm/eval/*_completions.jsonl", "asarm/eval/results.json")


def humaneval(knobs: dict[str, Any], runs: str, name: str, specs: str, kind: str,
              temperature: float, batch: int, batching: str = "continuous") -> Stage:
  """A timed HumanEval stage on the AS-ARM."""
  return Stage(name, (stages.benchmark(
      "humaneval", runs, workdir=f"{runs}/asarm", specs=specs, kind=kind,
      temperature=temperature, batch_size=batch, batching=batching,
      max_tasks=knobs["max_tasks"], execute=knobs["execute"]),), EVAL_FILES)


def build(knobs: dict[str, Any], runs: str) -> list[Stage]:
  """prepare, asarm, cost_model, greedy, the HumanEval stages, density, gen and sampling."""
  first_s = knobs["limit_s"] - knobs["draft_s"]
  train = [training.train(knobs, runs, "asarm", first_s, knobs["steps"])]
  if knobs["draft_s"]:
    train.append(training.train(knobs, runs, "asarm", knobs["draft_s"], knobs["steps"], **{
        "objective.draft_weight": knobs["draft_weight"]}))
  return [
      Stage("prepare", (training.prepare(knobs, runs),)),
      Stage("asarm", tuple(train)),
      Stage("cost_model", (stages.benchmark("cost_model", runs, workdir=f"{runs}/asarm", k=8,
                                            batch_sizes="1,64"),)),
      Stage("greedy", (stages.benchmark("greedy_agreement", runs, workdir=f"{runs}/asarm",
                                        specs=knobs["greedy_specs"],
                                        alone_rows=knobs["alone_rows"], compile_workers=4),)),
      humaneval(knobs, runs, "humaneval_t0.2", knobs["specs_b64"], "humaneval_single_line",
                0.2, 64, knobs["batching"]),
      humaneval(knobs, runs, "humaneval_b1", knobs["specs_b1"], "humaneval_single_line", 0.2, 1,
                knobs["batching"]),
      Stage("density", (training.evaluate(
          knobs, runs, "asarm", ("density", "draft_acceptance", "humaneval_single_line_prefix"),
          cli.parse_spec("tree:8").replace(temperature=0.2)),), EVAL_FILES),
      Stage("gen", (training.evaluate(
          knobs, runs, "asarm", ("gen_quality",), cli.parse_spec("sequential"), **{
              "eval.gen_samples_only": True, "eval.gen_num_prompts": 64,
              "eval.gen_methods": ("sequential", "assd", "assd_fused", "tree", "parallel")}),),
            ("asarm/eval/gen_samples_*.npz", "asarm/eval/results.json")),
      humaneval(knobs, runs, "humaneval_t1", knobs["spec"], "humaneval_single_line", 1.0, 64),
      humaneval(knobs, runs, "multi_line_t0.2", knobs["spec"], "humaneval_multi_line", 0.2, 64),
      humaneval(knobs, runs, "multi_line_t1", knobs["spec"], "humaneval_multi_line", 1.0, 64),
      Stage("sampling", (stages.benchmark(
          "sampling_speed", runs, workdir=f"{runs}/asarm", reference=True,
          budget_s=knobs["sampling_budget_s"]),)),
  ]
