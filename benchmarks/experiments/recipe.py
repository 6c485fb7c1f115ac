"""The training recipe of the headline run, measured at equal wall-clock, and a late draft
phase against none.

  python -m benchmarks experiment recipe --runs=/tmp/runs --out=$OUT --detach=true

Every run trains ``limit_s`` seconds after compilation, same seed and data, then its held-out
bits/token are measured. Stages: ``profile`` (where a batch-1 sampling call's time goes, per
attention kernel); one ``lr{LR}_b{BATCH}`` per entry of ``recipes`` (the batch, with the
learning rate scaled by the square root of the batch from the choice at 64, which runs again
as the control); ``late_draft`` (``late_recipe`` twice, sharing its first ``limit_s - late_s``
seconds: ``late_base`` goes on with the joint loss alone, ``late_draft`` adds the draft term
for the last ``late_s``; both get density and draft acceptance, then tokens per call). Each
schedule's steps come from ~7.1 steps/s at batch 64 (x2 at batch 32), so that it ends near the
limit.
"""
from __future__ import annotations

from typing import Any

from asarm_jax.sampling.spec import SamplerSpec
from benchmarks.experiments import stages, training
from benchmarks.experiments.headline import KNOBS as HEADLINE
from benchmarks.experiments.stages import Stage

KNOBS = dict({k: HEADLINE[k] for k in ("model", "attention", "max_files", "fractions",
                                       "max_tasks", "execute")},
             limit_s=150, late_s=30, steps_b64=1100, draft_weight=0.25,
             recipes="1.2e-3:64,8.5e-4:32,1.7e-3:128", late_recipe="1.2e-3:64",
             profile_impls="cudnn,pallas")


def trained(knobs: dict[str, Any], runs: str, name: str, lr_batch: str, limit_s: float,
            **extra: Any) -> stages.Command:
  """RUNS/NAME trained with the recipe ``LR:BATCH`` for ``limit_s`` seconds."""
  lr, batch = lr_batch.split(":")
  return training.train({**knobs, "lr": float(lr), "batch": int(batch)}, runs, name, limit_s,
                        knobs["steps_b64"] * 64 // int(batch), **extra)


def build(knobs: dict[str, Any], runs: str) -> list[Stage]:
  """profile, prepare, one stage per recipe, late_draft."""
  density = lambda name, tasks=("density",): training.evaluate(
      knobs, runs, name, tasks, SamplerSpec())
  built = [
      Stage("profile", tuple(stages.benchmark(
          "profile_step", runs, config=knobs["model"], attention_impl=impl, train_step=False,
          calls="1:1,1:36") for impl in knobs["profile_impls"].split(",") if impl)),
      Stage("prepare", (training.prepare(knobs, runs),)),
  ]
  for lr_batch in filter(None, knobs["recipes"].split(",")):
    lr, batch = lr_batch.split(":")
    name = f"lr{lr}_b{batch}"
    built.append(Stage(name, (trained(knobs, runs, name, lr_batch, knobs["limit_s"]),
                              density(name)), (f"{name}/eval/results.json",)))
  late, shared_s = knobs["late_recipe"], knobs["limit_s"] - knobs["late_s"]
  both = ("density", "draft_acceptance")
  built.append(Stage("late_draft", (
      trained(knobs, runs, "late_base", late, shared_s),
      stages.copy_tree(f"{runs}/late_base", f"{runs}/late_draft"),
      trained(knobs, runs, "late_base", late, knobs["late_s"]),
      trained(knobs, runs, "late_draft", late, knobs["late_s"],
              **{"objective.draft_weight": knobs["draft_weight"]}),
      density("late_base", both), density("late_draft", both),
      stages.benchmark("tokens_per_call", runs,
                       workdirs=f"{runs}/late_base,{runs}/late_draft")),
      ("late_base/eval/results.json", "late_draft/eval/results.json")))
  return built
