"""Rows whose tokens differ between exact decoders and call shapes, by default and with
deterministic decoding, and what the setting costs.

  python -m benchmarks greedy_agreement --workdir=runs/asarm [--specs=assd:5,assd_fused:5,tree:8]
  python -m benchmarks greedy_agreement --config=xlnet_base    (random weights)

At temperature 0 every exact decoder returns sequential greedy decoding's tokens in exact
arithmetic (docs/sampling.md); in bf16 on a GPU each call shape (rows per call, batch) may round
a near-tie the other way, after which the row diverges, unless decoding is deterministic
(``generate(..., deterministic=True)``). ``--rows`` held-out rows of the workdir's corpus
(random tokens with ``--config``) with ``--visible`` of their positions visible are decoded by
sequential decoding and every decoder of ``--specs``, each through ``--rows`` slots (batch 64 by
default) and through one slot (the batch-1 call shapes, in one dispatch; the first
``--alone_rows`` rows), for each ``--deterministic`` setting and ``--temperatures``. The
reference at temperature 0 is sequential decoding through ``--rows`` slots; above 0 (the same
keys) it is the same decoder through ``--rows`` slots, since decoders draw differently. Records
per (setting, temperature, spec, slots): rows whose tokens differ from the reference's, the
first position where they do (the median over those rows), and the milliseconds per network
call of the dispatch, measured on every run of a configuration after its first (which compiles
it; the temperature is traced, so the second temperature is timed). ``--compile_workers=N``
runs a setting's first, compiling runs in N threads. On the CPU in float32 every count is 0.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import time
from typing import Any, Iterator

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
  parser.add_argument("--alone_rows", type=int, default=0,
                      help="rows decoded through one slot (0: all)")
  parser.add_argument("--deterministic", type=cli.list_of(cli.flag_bool), default="false,true",
                      help="deterministic decoding off, on, or both")
  parser.add_argument("--temperatures", type=cli.list_of(float), default="0,1",
                      help="the first compiles every configuration, the others are timed")
  parser.add_argument("--compile_workers", type=int, default=1,
                      help="threads for the first temperature's (compiling, untimed) runs")


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
        visible: float = 0.05, length: int = 0, alone_rows: int = 0,
        deterministic: list[bool] = (False, True),
        temperatures: list[float] = (0.0, 1.0), compile_workers: int = 1) -> Iterator[dict]:
  """One record per (setting, temperature, spec, slots), yielded as each (setting,
  temperature) is done; the reference's own record has no count."""
  model, params, tokens, described = _rows(workdir, config, rows, length)
  tokens, visible_NxL = sampling_speed.prompts(tokens, rows, visible)
  alone = slice(0, alone_rows or rows)
  compiled = set()

  def decode(spec, slots, det):
    """Tokens and ms per call (None on a configuration's first run) of one dispatch."""
    part = slice(None) if slots == rows else alone
    began = time.perf_counter()
    out = jax.device_get(sampling.generate(
        model, params, tokens[part], visible_NxL[part], jax.random.key(0), spec=spec,
        slots=slots, deterministic=det))
    seconds = time.perf_counter() - began
    key = (spec.replace(temperature=0.0), slots, det)
    ms = 1e3 * seconds / int(out.num_network_calls) if key in compiled else None
    compiled.add(key)
    return np.asarray(out.tokens_BxL), ms

  for det in deterministic:
    for index, temperature in enumerate(temperatures):  # a setting's first compiles
      cases = [(text, slots, cli.parse_spec(text).replace(temperature=temperature))
               for text in ["sequential", *specs] for slots in (rows, 1)]
      with concurrent.futures.ThreadPoolExecutor(1 if index else compile_workers) as pool:
        done = pool.map(lambda case: decode(case[2], case[1], det), cases)
        runs = {(text, slots): (spec, out) for (text, slots, spec), out in zip(cases, done)}
      for (text, slots), (spec, (tokens_NxL, ms)) in runs.items():
        reference = ("sequential" if temperature == 0 else text, rows)
        differ = ({"rows_differing": None, "median_first_difference": None}
                  if (text, slots) == reference else
                  differing(tokens_NxL, runs[reference][1][0][:len(tokens_NxL)]))
        yield records.make(
            "greedy_agreement",
            {**cli.spec_settings(spec), "slots": slots, "rows": len(tokens_NxL),
             "visible": visible, "length": int(tokens.shape[1]), "deterministic": det,
             "reference": ("itself" if (text, slots) == reference else
                           f"{reference[0]}, {rows} slots")},
            {**differ, "ms_per_call": ms}, described)
