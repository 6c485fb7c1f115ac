"""Where a profiled decoding call's time goes, by model scope: a ``decode_profile`` record's
kernels named in the compiled HLO of the program it profiled.

  XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text --xla_dump_hlo_module_re=sample_" \
      python -m benchmarks decode_profile --config=xlnet_base --specs=sequential --top=60
  python -m benchmarks kernel_scopes --profile=RECORDS/DATE/decode_profile.jsonl \
      --hlo=DIR/module_N.jit_sample_sequential_t1_6.sm_9.0a_gpu_after_optimizations.txt \
      [--spec=sequential] [--batch=1]

A kernel of the trace is named after the HLO instruction that launches it, ``.`` and ``-``
written ``_`` (``gemm_fusion_dot.267`` runs as ``gemm_fusion_dot_267``); that instruction's
``op_name`` gives the model scope (layers merged as ``block_i``,
:func:`benchmarks.compiled_kernels.scope`). ``--hlo`` must be the profiled call's program,
which runs without CUDA graphs: for a case whose timed calls run on graphs (batch 1), the
dump's ``jit_sample_<tag>_<n>`` of the highest ``n`` (the profile compiles it last); for one
whose calls run without (batch 64), the program its timed calls compiled.
Kernels no instruction names (the Pallas kernels, library GEMMs, memcpy) keep their own name
as their scope. ``--hlo`` may be gzipped.

One ``kernel_scopes`` record per scope of the record's ``top_kernels`` (for ``--spec`` at
``--batch``; its date, machine and commit) of at least ``--min_share``, most time first:
``ms_per_call``, ``launches_per_call``, ``us_per_launch``, the share of the call's summed
kernel time and the kernels.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import re
from typing import Iterator

from benchmarks import compiled_kernels, records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--profile", required=True, help="a decode_profile records file")
  parser.add_argument("--hlo", required=True,
                      help="the profiled program's optimized HLO text (XLA's dump; may be .gz)")
  parser.add_argument("--spec", default="sequential")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--min_share", type=float, default=0.01,
                      help="scopes of a smaller share of the call's kernel time are left out")


def kernel_scopes(hlo: str) -> dict[str, str]:
  """Kernel name (as a trace names it) -> model scope, for every instruction of the HLO text
  with an ``op_name``."""
  named = {}
  for instructions in compiled_kernels.computations(hlo)[0].values():
    for inst in instructions:
      found = compiled_kernels.scope(inst)
      if found:
        named[re.sub(r"[.\-]", "_", inst.name)] = found
  return named


def by_scope(top_kernels: list[dict], named: dict[str, str]) -> list[dict]:
  """``top_kernels`` (``decode_profile``'s: kernel, ms, share, launches) merged by scope, most
  time first."""
  merged = collections.defaultdict(lambda: {"ms_per_call": 0.0, "launches_per_call": 0.0,
                                            "share": 0.0, "kernels": []})
  for k in top_kernels:
    row = merged[named.get(k["kernel"], k["kernel"])]
    row["ms_per_call"] += k["ms"]
    row["launches_per_call"] += k["launches"]
    row["share"] += k["share"]
    row["kernels"].append(k["kernel"])
  rows = [{"scope": scope, **row, "us_per_launch": 1e3 * row["ms_per_call"]
           / max(row["launches_per_call"], 1e-9)} for scope, row in merged.items()]
  return sorted(rows, key=lambda row: -row["ms_per_call"])


def run(profile: str, hlo: str, spec: str = "sequential", batch: int = 1,
        min_share: float = 0.01) -> Iterator[dict]:
  """One ``kernel_scopes`` record per scope of the profiled case (module doc)."""
  cases = [r for r in records.read(profile)
           if r["settings"]["spec"] == spec and r["settings"]["batch"] == batch]
  if len(cases) != 1:
    raise ValueError(f"{profile}: {len(cases)} decode_profile records of {spec} at batch "
                     f"{batch}; expected one")
  case = cases[0]
  opener = gzip.open if hlo.endswith(".gz") else open
  with opener(hlo, "rt", encoding="utf-8") as f:
    named = kernel_scopes(f.read())
  settings = {"spec": spec, "batch": batch,
              "gpu_ms_per_call": case["metrics"]["gpu_ms_per_call"],
              "kernels_per_call": case["metrics"]["kernels_per_call"]}
  for row in by_scope(case["metrics"]["top_kernels"], named):
    if row["share"] < min_share:
      continue
    yield records.make("kernel_scopes", settings, row, case["config"],
                       **{k: case[k] for k in ("date", "machine", "accelerator", "commit")})
