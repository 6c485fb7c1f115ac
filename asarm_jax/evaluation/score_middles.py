"""Scores HumanEval middles that were generated elsewhere (``eval.humaneval_execute=False``).

  python -m asarm_jax.evaluation.score_middles [--workers=N] [--timeout_s=S] [--max_tasks=N] \
      WORKDIR/eval/KIND_TAG_middles.json[.gz] ...

Generation needs the accelerator; running the tests needs only a CPU. A device session can
therefore write the middles (:func:`asarm_jax.evaluation.infill_eval.write_middles`), bring the
small JSON back, and leave the thousands of test programs to this command. The tasks are rebuilt
from the file's ``kind``, ``humaneval_max_tasks`` and ``seed``, and must be exactly the ones the
middles were generated for (tasks too long to lay out have none, and count as failed). For each
file, ``KIND_TAG_scores.jsonl`` (resumable, the same sandbox records as an on-device run) and
``KIND_TAG_report.json`` (the report ``--mode=eval`` would have written) are written beside it,
and a markdown table is printed. ``--max_tasks=N`` scores N of a file's tasks, drawn with its
``seed`` (:func:`infill_eval.subsample`: for a file of every task, the tasks a generation with
``eval.humaneval_max_tasks=N`` would have had), the same N for every file of one task list, so
paired comparisons hold; the report's ``num_tasks`` is then N, ``generated_tasks`` the file's,
and ``scored_tasks`` their ids (the scores file may hold more, from another run).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

from asarm_jax.evaluation import infill_eval, jsonio

SUFFIXES = ("_middles.json.gz", "_middles.json")


def stem(path: str) -> str:
  """``path`` without its ``_middles.json[.gz]`` suffix."""
  for suffix in SUFFIXES:
    if path.endswith(suffix):
      return path[:-len(suffix)]
  raise ValueError(f"{path}: expected a file named *{SUFFIXES[1]} or *{SUFFIXES[0]}")


def score_file(path: str, workers: int = 2, timeout_s: float = 5.0, max_tasks: int = 0) -> dict:
  """The HumanEval report of one middles file (``num_tasks``, ``pass@k``, ``status_counts``,
  the generation's ``tokens_per_call``, ...), on ``max_tasks`` of its tasks (0: all); writes
  the scores and the report beside it."""
  base = stem(path)
  with jsonio.open_text(path) as f:
    document = json.load(f)
  report, by_task = document["report"], document["by_task"]
  tasks = infill_eval.humaneval_tasks(document["kind"], document["humaneval_max_tasks"],
                                      document["seed"])
  ids = {t.task_id for t in tasks}
  if not set(by_task) <= ids or len(ids - set(by_task)) != report["num_too_long"]:
    raise ValueError(f"{path}: its middles do not match the {len(tasks)} tasks of "
                     f"{document['kind']} (max_tasks {document['humaneval_max_tasks']}, seed "
                     f"{document['seed']}) with {report['num_too_long']} too long")
  bad = [t for t, middles in by_task.items() if len(middles) != report["num_samples"]]
  if bad:
    raise ValueError(f"{path}: {len(bad)} tasks lack {report['num_samples']} middles, e.g. {bad[0]}")
  ks = [k for k in document["pass_at"] if k <= report["num_samples"]]
  chosen = infill_eval.subsample(tasks, max_tasks, document["seed"])
  if len(chosen) < len(tasks):
    by_task = {t.task_id: by_task[t.task_id] for t in chosen if t.task_id in by_task}
    report = {**report, "num_tasks": len(chosen), "num_too_long": len(chosen) - len(by_task),
              "generated_tasks": len(tasks), "scored_tasks": [t.task_id for t in chosen]}
  result = {**report, **infill_eval.score_humaneval(chosen, by_task, ks, workers, timeout_s,
                                                    f"{base}_scores.jsonl")}
  with open(f"{base}_report.json", "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("files", nargs="+", help="*_middles.json[.gz] files")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--timeout_s", type=float, default=5.0)
  parser.add_argument("--max_tasks", type=int, default=0,
                      help="score this many of each file's tasks, drawn with its seed (0: all)")
  args = parser.parse_args(argv)
  lines = ["| file | tasks | too long | tokens/call | pass@1 |", "|---|---|---|---|---|"]
  for path in args.files:
    r = score_file(path, args.workers, args.timeout_s, args.max_tasks)
    passed = r.get("pass@1")
    lines.append(f"| {os.path.basename(stem(path))} | {r['num_tasks']} | {r['num_too_long']} | "
                 f"{r['tokens_per_call'] or float('nan'):.3f} | "
                 + ("—" if passed is None else f"{100 * passed:.2f}") + " |")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
