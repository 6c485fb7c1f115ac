"""The infilling benchmarks end to end: HumanEval (pass@k) and ROCStories-protocol text (ROUGE).

Each function lays the tasks out (:mod:`~asarm_jax.evaluation.infill_model`), generates their
middles through a resumable cache and scores them (HumanEval's middles may instead be written
for scoring on another machine); file names under ``out_dir`` carry ``tag`` (checkpoint step,
sampler, batch size), so a changed model or sampler never reuses stale completions.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Mapping, Sequence

import flax.linen as nn
import ml_collections

from asarm_jax import sampling
from asarm_jax.evaluation import humaneval_infill, infill_model, jsonio, text_infill

# The "_prefix" kinds hide the suffix from the model (it still runs in the tests): the same
# tasks as a left-to-right LM can attempt them, for comparing an AS-ARM with a causal LM.
HUMANEVAL_KINDS = {"humaneval_single_line": humaneval_infill.single_line_tasks,
                   "humaneval_multi_line": humaneval_infill.multi_line_tasks,
                   "humaneval_single_line_prefix": humaneval_infill.single_line_tasks,
                   "humaneval_multi_line_prefix": humaneval_infill.multi_line_tasks}


def humaneval_tasks(kind: str, max_tasks: int, seed: int) -> list[humaneval_infill.InfillTask]:
  """The tasks of ``kind``, or a deterministic subsample of ``max_tasks`` (0: all) in task order."""
  return subsample(HUMANEVAL_KINDS[kind](), max_tasks, seed)


def subsample(tasks: Sequence[Any], max_tasks: int, seed: int) -> list[Any]:
  """``max_tasks`` of ``tasks`` (0 or more than there are: all), drawn with ``seed``, in order."""
  if 0 < max_tasks < len(tasks):
    return [tasks[i] for i in sorted(random.Random(seed).sample(range(len(tasks)), max_tasks))]
  return list(tasks)


def humaneval(model: nn.Module, params: Any, tokenizer: Any, ecfg: ml_collections.ConfigDict,
              spec: sampling.SamplerSpec, kind: str, out_dir: str, tag: str) -> dict:
  """pass@k of ``eval.num_samples`` middles per task sampled with ``spec``; tasks whose middle
  does not fit ``model.max_len`` count as failed. With ``eval.humaneval_execute=False`` the middles are only
  written to ``{kind}_{tag}_middles.json`` (:func:`write_middles`), to be scored elsewhere by
  ``python -m asarm_jax.evaluation.score_middles``; the report then has no pass@k."""
  tasks = humaneval_tasks(kind, ecfg.humaneval_max_tasks, ecfg.seed)
  done = infill_model.complete(
      model, params, tokenizer, tasks, os.path.join(out_dir, f"{kind}_{tag}_completions.jsonl"),
      spec=spec, num_samples=ecfg.num_samples, batch_size=ecfg.batch_size, seed=ecfg.seed,
      desc=kind, show_suffix=not kind.endswith("_prefix"))
  report = {"num_tasks": len(tasks), "num_too_long": len(done.too_long),
            "num_truncated": done.num_truncated, "num_samples": ecfg.num_samples,
            "tokens_per_call": done.tokens_per_call}
  if not ecfg.humaneval_execute:
    path = os.path.join(out_dir, f"{kind}_{tag}_middles.json")
    write_middles(path, kind, ecfg, done.by_task, report)
    return {**report, "middles": os.path.basename(path)}
  return {**report, **score_humaneval(
      tasks, done.by_task, [k for k in ecfg.pass_at if k <= ecfg.num_samples],
      ecfg.sandbox_workers, ecfg.sandbox_timeout_s,
      os.path.join(out_dir, f"{kind}_{tag}_scores.jsonl"))}


def score_humaneval(tasks: Sequence[humaneval_infill.InfillTask],
                    by_task: Mapping[str, Sequence[str]], ks: Sequence[int], workers: int,
                    timeout_s: float, results_path: str) -> dict:
  """``pass@k`` for each of ``ks`` over all ``tasks`` and the sandbox ``status_counts`` of the
  middles ``by_task[task_id]``; a task without middles (too long to lay out) counts as failed."""
  scored = [t for t in tasks if t.task_id in by_task]
  if not scored:
    return {**{f"pass@{k}": 0.0 for k in ks}, "status_counts": {}}
  scores = humaneval_infill.score(scored, by_task, k_values=ks, workers=workers,
                                  timeout_s=timeout_s, results_path=results_path)
  # pass@k is a mean over tasks: the unscored (too long) ones contribute 0.
  fitted = len(scored) / len(tasks)
  return {**{f"pass@{k}": scores[f"pass@{k}"] * fitted for k in ks},
          "status_counts": scores["status_counts"]}


def write_middles(path: str, kind: str, ecfg: ml_collections.ConfigDict,
                  by_task: Mapping[str, Sequence[str]], report: Mapping[str, Any]) -> None:
  """The generated middles of a HumanEval ``kind`` as one JSON document: what picks the tasks
  (``humaneval_max_tasks``, ``seed``), ``pass_at``, the generation ``report`` (with
  ``num_samples``, the middles per task, where it lacks them) and ``by_task``."""
  counts = sorted({len(middles) for middles in by_task.values()})
  if len(counts) > 1:
    raise ValueError(f"{path}: tasks hold {counts} middles; expected one number for all")
  report = {"num_samples": counts[0] if counts else 0, **report}
  document = {"kind": kind, "humaneval_max_tasks": ecfg.humaneval_max_tasks, "seed": ecfg.seed,
              "pass_at": list(ecfg.pass_at), "report": jsonio.strict(report),
              "by_task": dict(by_task)}
  with open(f"{path}.tmp", "w", encoding="utf-8") as f:
    json.dump(document, f)
  os.replace(f"{path}.tmp", path)


def text(model: nn.Module, params: Any, tokenizer: Any, ecfg: ml_collections.ConfigDict,
         spec: sampling.SamplerSpec, stories: Sequence[text_infill.Story], out_dir: str,
         tag: str) -> dict:
  """ROUGE-1/2/L of one middle per story, for every setting of ``eval.text_settings``.

  A story whose hidden span does not fit ``model.max_len`` scores an empty prediction.
  """
  if not stories:
    raise ValueError("text_infill: no stories (set eval.rocstories_csv, or use a text corpus "
                     "whose held-out split has 5-sentence windows)")
  report = {}
  for setting in ecfg.text_settings:
    tasks = text_infill.make_tasks(stories, setting)
    name = setting.replace("/", "of")
    done = infill_model.complete(
        model, params, tokenizer, tasks, os.path.join(out_dir, f"text_{name}_{tag}.jsonl"),
        spec=spec, num_samples=1, batch_size=ecfg.batch_size, seed=ecfg.seed,
        desc=f"text_infill {setting}")
    predictions = [done.by_task.get(t.task_id, [""])[0] for t in tasks]
    report[setting] = {"num_tasks": len(tasks), "num_too_long": len(done.too_long),
                       "num_truncated": done.num_truncated,
                       "tokens_per_call": done.tokens_per_call,
                       **text_infill.rouge(predictions, [t.middle for t in tasks])}
  return report
