"""The AS-ARM against the MDLM of ``experiment mdlm_baseline``, from the run's packed outputs.

  python -m benchmarks mdlm_comparison --unpacked=DIR   # mdlm_baseline.tgz, unpacked in DIR

Reads what the device call returned: ``stages.jsonl`` (the machine, commit and each stage's
seconds), ``out/{asarm,mdlm}_density/*results.json`` and the HumanEval middles of
``out/{asarm,mdlm}_{single,multi}_line/``, scored first on a CPU machine with ``python -m
asarm_jax.evaluation.score_middles`` (its ``*_report.json`` beside each). Writes one
``mdlm_training`` record per model (steps, tokens, the training stage's seconds), one
``mdlm_density`` record per visible fraction (the AS-ARM's exact left-to-right and any-subset
bits, the bound of its independent marginals, and the MDLM's bound: ``docs/mdlm.md``), and one
``mdlm_humaneval`` record per (task, model, decoder): pass@1, tokens per call, calls per
hidden token and the paired exact McNemar test against the AS-ARM's sequential decoding. Each
record keeps the run's date, machine, accelerator and commit.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
from typing import Any, Iterator

from asarm_jax.evaluation import compare_passes
from benchmarks import common, records

MODELS = ("asarm", "mdlm")
KINDS = ("single_line", "multi_line")
# ..._humaneval_single_line_step2400_tree_n8_d6_g2_t0.2_seed0_b64_continuous_report.json
_SCORED = re.compile(r"humaneval_(\w+?_line)_step\d+_(.+)_t([\d.]+)_seed\d+_b\d+_\w+_report\.json$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--unpacked", required=True,
                      help="the folder mdlm_baseline.tgz was unpacked in (stages.jsonl, out/)")


def _load(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _results(unpacked: str, stage: str) -> dict:
  """The ``results.json`` a stage returned."""
  (path,) = glob.glob(os.path.join(unpacked, "out", stage, "*results.json"))
  return _load(path)


def training(stage_records: dict[str, dict], knobs: dict[str, Any]) -> Iterator[tuple[dict, dict]]:
  """Each model's steps and tokens (equal by construction) and its training stage's seconds
  (startup and compilation included)."""
  seq_len = common.config_of(knobs["model"]).data.seq_len
  for model in MODELS:
    yield {"model": model}, {
        "steps": knobs["steps"], "tokens_M": knobs["steps"] * knobs["batch"] * seq_len / 1e6,
        "stage_s": stage_records[model]["metrics"]["seconds"]}


def density(unpacked: str) -> Iterator[tuple[dict, dict]]:
  """Held-out bits per hidden token at each visible fraction, both models on the same sets."""
  asarm = _results(unpacked, "asarm_density")["tasks"]["density"]["bits_per_token"]
  mdlm = _results(unpacked, "mdlm_density")["tasks"]["density"]["bits_per_token"]["mdlm_elbo"]
  for fraction in mdlm:
    yield {"visible": float(fraction)}, {
        "AS-ARM left to right (exact)": asarm["left_to_right"][fraction],
        "AS-ARM any subset (exact)": asarm["any_subset"][fraction],
        "AS-ARM marginals' bound": asarm["mdlm_elbo"][fraction],
        "MDLM bound": mdlm[fraction]}


def humaneval(unpacked: str) -> Iterator[tuple[dict, dict]]:
  """pass@1 and calls of every scored middles file, by task, model and decoder, and the paired
  exact McNemar test against the AS-ARM's sequential decoding of the same task."""
  for kind in KINDS:
    base = None
    for model in MODELS:
      folder = os.path.join(unpacked, "out", f"{model}_{kind}")
      scored = [(path, _SCORED.search(os.path.basename(path)))
                for path in glob.glob(os.path.join(folder, "*_report.json"))]
      # sequential first: the baseline of the comparisons
      ours = [(path, match) for path, match in scored if match and match.group(1) == kind]
      for path, match in sorted(ours, key=lambda pm: (pm[1].group(2) != "sequential", pm[0])):
        report = _load(path)
        passes = compare_passes.passes(path[:-len("_report.json")] + "_scores.jsonl")
        if "scored_tasks" in report:  # a subsample (score_middles --max_tasks)
          scored = set(report["scored_tasks"])
          passes = {key: passed for key, passed in passes.items() if key[0] in scored}
        base = base or passes
        paired = compare_passes.compare(base, passes)
        yield {"task": kind, "model": model, "decoder": match.group(2),
               "temperature": float(match.group(3))}, {
            "pass@1": report["pass@1"], "passed": paired["passed"], "tasks": report["num_tasks"],
            "tokens/call": report["tokens_per_call"],
            "calls/token": 1.0 / report["tokens_per_call"],
            "McNemar p against the AS-ARM's sequential": paired["p"]}


def run(unpacked: str) -> Iterator[dict]:
  stage_records = {r["settings"]["stage"]: r
                   for r in records.read(os.path.join(unpacked, "stages.jsonl"))}
  first = next(iter(stage_records.values()))
  known = {f: first[f] for f in ("date", "machine", "accelerator", "commit")}
  made = [("mdlm_training", training(stage_records, first["settings"]["knobs"])),
          ("mdlm_density", density(unpacked)), ("mdlm_humaneval", humaneval(unpacked))]
  for name, rows in made:
    for settings, metrics in rows:
      yield records.make(name, settings, metrics, **known)
