"""Tokens per network call of the exact samplers on several checkpoints, side by side.

  python -m benchmarks tokens_per_call --workdirs=runs/draft0,runs/draft0.25

For every workdir (same model config, e.g. a sweep of ``objective.draft_weight``), every
sampler of ``--specs`` (``method:k``, or ``tree:N`` with ``--depth`` and ``--ngram``), visible
fraction and temperature: one batch of 64 held-out rows with a random fraction of positions
visible, decoded left to right; tokens/call is generated tokens over calls, summed over the
batch. The prompts and seeds are the same for every workdir and sampler (those of
:mod:`benchmarks.sampling_speed`). One record per (workdir, sampler, visible, temperature).
"""
from __future__ import annotations

import argparse

import numpy as np

from asarm_jax import inference
from benchmarks import cli, records, sampling_speed


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdirs", type=cli.list_of(str), required=True,
                      help="trained workdirs to compare")
  parser.add_argument("--specs", type=cli.list_of(str), default="assd:5,assd_fused:5,tree:16",
                      help="samplers: method:k or tree:N[:D]")
  parser.add_argument("--fractions", type=cli.list_of(float), default="0.05,0.5",
                      help="visible fractions")
  parser.add_argument("--temperatures", type=cli.list_of(float), default="1.0,0.7,0.2",
                      help="temperatures")
  parser.add_argument("--depth", type=int, default=6, help="tree depth D where not given")
  parser.add_argument("--ngram", type=int, default=2, help="the tree's prompt-lookup length")


def run(workdirs: list[str], specs: list[str] = ("assd:5",), fractions: list[float] = (0.05,),
        temperatures: list[float] = (1.0,), depth: int = 6, ngram: int = 2) -> list[dict]:
  """Tokens per call of every (workdir, sampler, visible fraction, temperature)."""
  made = []
  for workdir in workdirs:
    loaded = inference.load(workdir)
    rows = sampling_speed.heldout_rows(loaded, workdir)
    for text in specs:
      base = cli.parse_spec(text, depth, ngram)
      for fraction in fractions:
        batch = [sampling_speed.prompts(rows, rows.shape[0], fraction, seed=0)]
        for temperature in temperatures:
          spec = base.replace(temperature=temperature)
          _, generated, calls = sampling_speed.decode(loaded, batch, spec, seed=1)
          made.append(records.make(
              "tokens_per_call",
              {**cli.spec_settings(spec), "visible": fraction, "rows": len(rows)},
              {"tokens_per_call": float(np.sum(generated) / np.sum(calls))},
              {"workdir": workdir, "step": int(loaded.step)}))
  return made
