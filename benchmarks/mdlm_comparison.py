"""The AS-ARM against the MDLM of ``experiment mdlm_baseline``, from the run's packed outputs.

  python -m benchmarks mdlm_comparison --unpacked=DIR   # mdlm_baseline.tgz, unpacked in DIR
      [--judged=JDIR]   # causal_lm.tgz of the judge of this run's samples, unpacked in JDIR

Reads what the device call returned: ``stages.jsonl`` (the machine, commit and each stage's
seconds), ``out/{asarm,mdlm}_density/*results.json`` and the HumanEval middles of
``out/{asarm,mdlm}_{single,multi}_line/``, scored first on a CPU machine with ``python -m
asarm_jax.evaluation.score_middles`` (its ``*_report.json`` beside each). Writes one
``mdlm_training`` record per model (steps, tokens, the training stage's seconds), one
``mdlm_density`` record per visible fraction (the AS-ARM's exact left-to-right and any-subset
bits, the bound of its independent marginals, and the MDLM's bound: ``docs/mdlm.md``), and one
``mdlm_humaneval`` record per (task, model, decoder): pass@1, tokens per call, calls per
hidden token and the paired exact McNemar test against the AS-ARM's sequential decoding. With
``--judged``, one ``mdlm_generation_quality`` record per sampler of either model's samples (and
one for the held-out data) from the judge's ``out/judged/*_judged.json``: tokens per call, judge
perplexity, entropy, and two Welch t-tests of the perplexity: against the same model's first
sampler (the AS-ARM's sequential, the MDLM's k=1) and against the AS-ARM's sequential. Each
record keeps the date, machine, accelerator and commit of the run that made it.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
from typing import Any, Iterator

from asarm_jax.evaluation import compare_passes, metrics
from benchmarks import common, records

MODELS = ("asarm", "mdlm")
KINDS = ("single_line", "multi_line")
# ..._humaneval_single_line_step2400_tree_n8_d6_g2_t0.2_seed0_b64_continuous_report.json
_SCORED = re.compile(r"humaneval_(\w+?_line)_step\d+_(.+)_t([\d.]+)_seed\d+_b\d+_\w+_report\.json$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--unpacked", required=True,
                      help="the folder mdlm_baseline.tgz was unpacked in (stages.jsonl, out/)")
  parser.add_argument("--judged", default="",
                      help="the folder causal_lm.tgz of the samples' judge was unpacked in")


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


def generation_quality(judged: str) -> Iterator[tuple[dict, dict]]:
  """Judge perplexity and entropy of each model's samples, by sampler; the held-out data once.
  A file's model is told by its samplers: the MDLM's are all ``mdlm``."""
  results = [_load(path) for path in
             sorted(glob.glob(os.path.join(judged, "out", "judged", "*_judged.json")))]
  by_model = {("mdlm" if all(r["method"] in ("mdlm", "data") for r in result["methods"].values())
               else "asarm"): result["methods"] for result in results}
  base = by_model["asarm"][next(iter(by_model["asarm"]))]
  rows = [(model, name, row) for model in MODELS for name, row in by_model[model].items()
          if row["method"] != "data"]
  data = next(row for row in by_model["asarm"].values() if row["method"] == "data")
  for model, sampler, row in rows + [("data", "held-out data", data)]:
    t, p = metrics.welch_t_test_from_stats(
        row["judge_ppl"], row["judge_ppl_std"], row["num_samples"], base["judge_ppl"],
        base["judge_ppl_std"], base["num_samples"])
    yield {"model": model, "sampler": sampler}, {
        "tokens/call": row["tokens_per_call"] or "—", "samples": row["num_samples"],
        "judge PPL": row["judge_ppl"], "PPL sd": row["judge_ppl_std"], "entropy": row["entropy"],
        "p (PPL) against the model's first sampler": row["p_ppl"] if model != "data" else "—",
        "t (PPL) against the AS-ARM's sequential": t,
        "p (PPL) against the AS-ARM's sequential": p}


def _known(stages_file: str) -> dict:
  """The date, machine, accelerator and commit of the run that wrote ``stages_file``."""
  first = next(iter(records.read(stages_file)))
  return {f: first[f] for f in ("date", "machine", "accelerator", "commit")}


def run(unpacked: str, judged: str = "") -> Iterator[dict]:
  stages_file = os.path.join(unpacked, "stages.jsonl")
  stage_records = {r["settings"]["stage"]: r for r in records.read(stages_file)}
  knobs = next(iter(stage_records.values()))["settings"]["knobs"]
  made = [("mdlm_training", training(stage_records, knobs), stages_file),
          ("mdlm_density", density(unpacked), stages_file),
          ("mdlm_humaneval", humaneval(unpacked), stages_file)]
  if judged:
    made.append(("mdlm_generation_quality", generation_quality(judged),
                 os.path.join(judged, "stages.jsonl")))
  for name, rows, source in made:
    known = _known(source)
    for settings, values in rows:
      yield records.make(name, settings, values, **known)
