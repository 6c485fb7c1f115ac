"""The decoder table of a timed HumanEval step: pass@1, tokens per call, generation wall-clock
and the paired McNemar test of each decoder against the first, as markdown.

  python benchmarks/humaneval_table.py OUT/humaneval_single_line_t0.2_b64.json EVAL_DIR

The JSON is what ``benchmarks/h100_session.sh humaneval`` writes with EXECUTE=0 (per METHODS
entry: ``tokens_per_call``, ``generation_s`` and its ``middles`` file); EVAL_DIR holds those
middles after ``python -m asarm_jax.evaluation.score_middles`` scored them (``*_report.json``
and ``*_scores.jsonl``, either may be gzipped).
"""
from __future__ import annotations

import json
import os
import sys

from asarm_jax.evaluation import compare_passes, jsonio, score_middles


def _existing(path: str) -> str:
  for candidate in (path, path + ".gz"):
    if os.path.exists(candidate):
      return candidate
  raise FileNotFoundError(f"{path}[.gz]: score the middles first (score_middles)")


def table(step_json: str, eval_dir: str) -> str:
  """One markdown row per decoder of ``step_json``, the first being the baseline."""
  with open(step_json, encoding="utf-8") as f:
    step = json.load(f)
  rows, base = [], None
  for spec, r in step.items():
    stem = os.path.join(eval_dir, score_middles.stem(r["middles"]))
    with jsonio.open_text(_existing(f"{stem}_report.json")) as f:
      report = json.load(f)
    passes = compare_passes.passes(_existing(f"{stem}_scores.jsonl"))
    if base is None:
      base, base_s = passes, r["generation_s"]
    paired = compare_passes.compare(base, passes)
    pairs = ("—",) * 4 if passes is base else (
        paired["both"], paired["only_base"], paired["only_other"], f"{paired['p']:.2g}")
    rows.append(f"| {spec} | {100 * report['pass@1']:.2f} ({paired['passed']}) | "
                f"{r['tokens_per_call']:.2f} | {r['generation_s']:.2f} s | "
                f"{base_s / r['generation_s']:.2f}x | " + " | ".join(map(str, pairs)) + " |")
  return "\n".join(["| decoder | pass@1 | tokens/call | generation wall-clock | against the "
                    "first | passed by both | only the first | only this | exact McNemar p |",
                    "|---|---|---|---|---|---|---|---|---|", *rows])


if __name__ == "__main__":
  print(table(*sys.argv[1:]))
