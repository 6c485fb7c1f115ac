"""The samplers of one timed HumanEval run compared with the first: pass@1, the paired exact
McNemar test, identical middles, tokens per call and generation wall-clock.

  python -m benchmarks decoders --records=RECORDS_DIR/DATE/humaneval.jsonl --workdir=runs/asarm

``--records`` holds the records of :mod:`benchmarks.humaneval` run with ``--execute=false``;
their middles (``WORKDIR/eval/*_middles.json``, either may be gzipped) must have been scored by
``python -m asarm_jax.evaluation.score_middles`` (``*_report.json`` and ``*_scores.jsonl``
beside them). The first record's sampler is the baseline. Identical middles matter for greedy
decoding (T=0), where every exact sampler at every batch size must give the same middles up to
the device's rounding on near-ties. One record per sampler.
"""
from __future__ import annotations

import argparse
import json
import os

from asarm_jax.evaluation import compare_passes, jsonio, score_middles
from benchmarks import records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--records", dest="records_path", required=True,
                      help="humaneval records (JSONL)")
  parser.add_argument("--workdir", required=True, help="the workdir the middles are under")


def existing(path: str) -> str:
  """``path`` or ``path.gz``, whichever exists."""
  for candidate in (path, path + ".gz"):
    if os.path.exists(candidate):
      return candidate
  raise FileNotFoundError(f"{path}[.gz]: score the middles first (score_middles)")


def load(path: str) -> dict:
  """The JSON document at ``path`` (plain or gzipped)."""
  with jsonio.open_text(existing(path)) as f:
    return json.load(f)


def run(records_path: str, workdir: str) -> list[dict]:
  """One record per sampler of ``records_path``, each against the first."""
  made, base = [], None
  for timed in records.read(records_path):
    stem = score_middles.stem(os.path.join(workdir, timed["metrics"]["middles"]))
    middles = load(f"{stem}_middles.json")["by_task"]
    passes = compare_passes.passes(existing(f"{stem}_scores.jsonl"))
    base = base or (timed, middles, passes)
    paired = compare_passes.compare(base[2], passes)
    same = sorted(set(base[1]) & set(middles))
    made.append(records.make(
        "decoders", timed["settings"],
        {"pass@1": load(f"{stem}_report.json")["pass@1"], "passed": paired["passed"],
         "tokens_per_call": timed["metrics"]["tokens_per_call"],
         "generation_s": timed["metrics"]["generation_s"],
         "speedup": base[0]["metrics"]["generation_s"] / timed["metrics"]["generation_s"],
         "both": paired["both"], "only_first": paired["only_base"],
         "only_this": paired["only_other"], "mcnemar_p": paired["p"],
         "tasks_in_both": len(same),
         "identical_middles": sum(base[1][t] == middles[t] for t in same)},
        timed["config"]))
  return made
