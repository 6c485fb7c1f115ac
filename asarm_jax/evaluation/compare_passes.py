"""Paired pass/fail comparison of HumanEval results files: do two decoders differ?

  python -m asarm_jax.evaluation.compare_passes BASE.jsonl[.gz] OTHER.jsonl[.gz] ...

Each file is a sandbox results file of ``humaneval_infill.score`` (one record per
(task_id, sample) with ``passed``), e.g. ``eval/humaneval_single_line_..._scores.jsonl``. All
files must hold the same (task_id, sample) keys. Exact decoders sample the same distribution, so
on the same model and tasks their pass rates may differ only by noise; the exact McNemar test on
the discordant pairs says whether they do. Prints a markdown table, each file against BASE.
"""
from __future__ import annotations

import argparse
import os
from typing import Mapping, Sequence

from asarm_jax.evaluation import humaneval_infill, metrics


def passes(path: str) -> dict[tuple[str, int], bool]:
  """``{(task_id, sample): passed}`` of one results file."""
  return {key: bool(r["passed"]) for key, r in humaneval_infill.read_results(path).items()}


def compare(base: Mapping[tuple[str, int], bool],
            other: Mapping[tuple[str, int], bool]) -> dict:
  """Counts of paired outcomes and the exact McNemar p-value of ``other`` against ``base``."""
  if base.keys() != other.keys():
    diff = sorted(base.keys() ^ other.keys())
    raise ValueError(f"the files hold different samples: {len(diff)} differ, e.g. {diff[:3]}")
  both = sum(base[k] and other[k] for k in base)
  only_base = sum(base[k] and not other[k] for k in base)
  only_other = sum(other[k] and not base[k] for k in base)
  return {"samples": len(base), "passed": both + only_other, "both": both,
          "only_base": only_base, "only_other": only_other,
          "p": metrics.mcnemar_exact(only_base, only_other)}


def table(paths: Sequence[str]) -> str:
  """Markdown: each file's passes, and its paired counts and McNemar p against the first."""
  if len(paths) < 2:
    raise ValueError("give a base file and at least one file to compare with it")
  base = passes(paths[0])
  lines = ["| file | passed | pass rate | both | only base | only this | exact McNemar p |",
           "|---|---|---|---|---|---|---|"]
  for i, path in enumerate(paths):
    row = compare(base, passes(path) if i else base)
    pairs = ("—", "—", "—", "—") if i == 0 else (
        row["both"], row["only_base"], row["only_other"], f"{row['p']:.3g}")
    lines.append(f"| {os.path.basename(path)} | {row['passed']}/{row['samples']} | "
                 f"{100 * row['passed'] / row['samples']:.2f} | " + " | ".join(map(str, pairs))
                 + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("files", nargs="+", help="BASE then OTHER results files (*.jsonl[.gz])")
  print(table(parser.parse_args(argv).files))


if __name__ == "__main__":
  main()
