"""Greedy decoding's tokens, every exact decoder at batch 1 and at batch 64, against sequential
decoding's: how many rows differ.

  python -m benchmarks greedy_agreement --workdir=runs/asarm [--specs=assd:5,assd_fused:5,tree:8]
  python -m benchmarks greedy_agreement --config=xlnet_base    (random weights)

At temperature 0 every exact decoder returns sequential greedy decoding's tokens in exact
arithmetic (docs/sampling.md); in bf16 on a GPU each call shape (rows per call, batch) may round
a near-tie the other way, after which the row diverges. ``--rows`` held-out rows of the
workdir's corpus (random tokens with ``--config``) with ``--visible`` of their positions
visible are decoded greedily by sequential decoding and every decoder of ``--specs``, each
through ``--rows`` slots (batch 64 by default) and through one slot (the batch-1 call shapes,
in one dispatch). The reference is sequential decoding through ``--rows`` slots. Records per
(spec, slots): rows whose tokens differ from the reference's and the first position where they
do (the median over those rows). On the CPU in float32 every count is 0.
"""
from __future__ import annotations

import argparse
from typing import Any

import jax
import numpy as np

from asarm_jax import sampling
from benchmarks import cli, common, records, sampling_speed


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", default="", help="a trained workdir (held-out rows)")
  parser.add_argument("--config", default="", help="or configs/NAME.py, random weights")
  parser.add_argument("--specs", type=cli.list_of(str),
                      default="assd:5,assd_fused:5,tree:8,auto:8",
                      help="exact decoders besides sequential")
  parser.add_argument("--rows", type=int, default=64, help="rows (and slots of the batched run)")
  parser.add_argument("--visible", type=float, default=0.05, help="visible fraction")
  parser.add_argument("--length", type=int, default=0, help="tokens per row (0: seq_len)")


def _rows(workdir: str, config: str, rows: int, length: int) -> tuple[Any, Any, np.ndarray, dict]:
  """``(model, params, tokens_NxL, record config)``: held-out rows of ``workdir``, or random
  tokens for ``config``'s random weights."""
  loaded, described = common.load(workdir, config)
  if workdir:
    heldout = sampling_speed.heldout_rows(loaded, workdir)
    tokens = np.resize(heldout, (rows, heldout.shape[1]))
  else:
    tokens = np.random.default_rng(0).integers(
        loaded.model.num_special_tokens, loaded.model.vocab_size,
        (rows, loaded.config.data.seq_len), np.int32)
  return loaded.model, loaded.params, tokens[:, :length or None], described


def differing(tokens_NxL: np.ndarray, reference_NxL: np.ndarray) -> dict[str, float]:
  """Rows that differ from the reference, and the median first position where they do."""
  differs_NxL = tokens_NxL != reference_NxL
  rows_N = differs_NxL.any(1)
  first = np.argmax(differs_NxL[rows_N], 1) if rows_N.any() else np.zeros(0)
  return {"rows_differing": int(rows_N.sum()),
          "median_first_difference": float(np.median(first)) if rows_N.any() else None}


def run(workdir: str = "", config: str = "", specs: list[str] = ("assd:5",), rows: int = 64,
        visible: float = 0.05, length: int = 0) -> list[dict]:
  """One record per (spec, slots), sequential's own batch-1 run included."""
  model, params, tokens, described = _rows(workdir, config, rows, length)
  tokens, visible_NxL = sampling_speed.prompts(tokens, rows, visible)
  decode = lambda spec, slots: np.asarray(sampling.generate(
      model, params, tokens, visible_NxL, jax.random.key(0), spec=spec, slots=slots).tokens_BxL)
  sequential = sampling.SamplerSpec("sequential", temperature=0.0)
  reference = decode(sequential, rows)
  made = []
  for text in ["sequential", *specs]:
    spec = cli.parse_spec(text).replace(temperature=0.0)
    for slots in (rows, 1):
      if text == "sequential" and slots == rows:
        continue
      made.append(records.make(
          "greedy_agreement", {**cli.spec_settings(spec), "slots": slots, "rows": rows,
                               "visible": visible, "length": int(tokens.shape[1]),
                               "reference": f"sequential, {rows} slots"},
          differing(decode(spec, slots), reference), described))
  return made
