"""The ratios of one timed run's decoders: each against sequential decoding of the same cell,
and HumanEval's continuous batching against its batches.

  python -m benchmarks speed_ratios --records=RECORDS_DIR/DATE/sampling_speed.jsonl
  python -m benchmarks speed_ratios --records=RECORDS_DIR/DATE/humaneval.jsonl

From ``sampling_speed`` records, one ``decoders_speed`` record per decoder and cell (batch,
visible fraction, T): tokens per call, tokens/s, ms per call, tokens/s against sequential's
and against the fastest other decoder of the cell, and ``auto``'s share of rounds by draft
size. From ``humaneval`` records (:mod:`benchmarks.humaneval`), one ``humaneval_speed`` record
per (decoder, batching): generation wall-clock against sequential's of the same batch size and
batching, and against the same decoder's other batching. Figures only divide measured ones of
the same run; each record keeps its source's date, machine, accelerator and commit.
"""
from __future__ import annotations

import argparse
from typing import Any, Iterator

from benchmarks import records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--records", dest="records_path", required=True,
                      help="sampling_speed or humaneval records (JSONL) of one run")


def decoder(settings: dict[str, Any]) -> str:
  """A decoder's label, e.g. ``assd_fused, k=5`` or ``tree, N=8, depth 6``."""
  if settings["method"] == "tree":
    return f"tree, N={settings['num_nodes']}, depth {settings['depth']}"
  per_batch = ", per batch" if settings.get("size_choice") == "batch" else ""
  return settings["method"] + (f", k={settings['k']}" if settings.get("k") else "") + per_batch


def ratio(a: float, b: float) -> str:
  return f"{a / b:.2f}x"


def _like(source: dict, name: str, settings: dict, metrics: dict) -> dict:
  return records.make(name, settings, metrics, {"source": source["name"], **source["config"]},
                      **{f: source[f] for f in ("date", "machine", "accelerator", "commit")})


def decoders_speed(made: list[dict]) -> Iterator[dict]:
  """``decoders_speed`` records of ``sampling_speed`` ones."""
  cell = lambda r: (r["settings"]["batch"], r["settings"]["visible"],
                    r["settings"]["temperature"])
  cells: dict[tuple, list[dict]] = {}
  for r in made:
    cells.setdefault(cell(r), []).append(r)
  for key in sorted(cells, key=lambda c: (c[0], c[1], -c[2])):
    runs = cells[key]
    sequential = next((r for r in runs if r["settings"]["method"] == "sequential"), None)
    for r in runs:
      m = r["metrics"]
      others = [o["metrics"]["tokens_per_s"] for o in runs if o is not r]
      shares = m.get("round_share_by_size", {})
      yield _like(r, "decoders_speed", {
          "batch": key[0], "visible": key[1], "T": key[2], "decoder": decoder(r["settings"])}, {
          "tokens/call": round(m["tokens_per_call"], 2),
          "tokens/s": round(m["tokens_per_s"]),
          "ms/call": round(m["ms_per_call"], 3),
          "against sequential": ratio(m["tokens_per_s"], sequential["metrics"]["tokens_per_s"])
                                if sequential else "",
          "against the fastest other": ratio(m["tokens_per_s"], max(others)) if others else "",
          "auto's rounds by draft size": ", ".join(
              f"{size}: {100 * share:.0f}%" for size, share in shares.items() if share >= 0.005)})


BATCHING = {("continuous", 1): "1 slot", ("batches", 1): "dispatches of 1"}


def batching(settings: dict[str, Any]) -> str:
  """``64 slots`` or ``dispatches of 64``."""
  b, size = settings["batching"], settings["batch_size"]
  return BATCHING.get((b, size)) or (f"{size} slots" if b == "continuous" else
                                     f"dispatches of {size}")


def humaneval_speed(made: list[dict]) -> Iterator[dict]:
  """``humaneval_speed`` records of ``humaneval`` ones."""
  seconds = {(decoder(r["settings"]), r["settings"]["batch_size"], r["settings"]["batching"]):
             r["metrics"]["generation_s"] for r in made}
  for r in made:
    s, m = r["settings"], r["metrics"]
    size, own = s["batch_size"], s["batching"]
    other = seconds.get((decoder(s), size, "batches" if own == "continuous" else "continuous"))
    sequential = seconds.get(("sequential", size, own))
    yield _like(r, "humaneval_speed", {"decoder": decoder(s), "batching": batching(s)}, {
        "tokens/call": round(m["tokens_per_call"], 2),
        "generation wall-clock": f"{m['generation_s']:.2f} s",
        "against sequential, same batching": ratio(sequential, m["generation_s"])
                                             if sequential else "",
        "against the other batching": ratio(other, m["generation_s"]) if other else ""})


def run_on(made: list[dict]) -> Iterator[dict]:
  """The ratio records of one run's ``sampling_speed`` or ``humaneval`` records."""
  kinds = {r["name"] for r in made}
  if kinds == {"sampling_speed"}:
    yield from decoders_speed(made)
  elif kinds == {"humaneval"}:
    yield from humaneval_speed(made)
  else:
    raise ValueError(f"expected sampling_speed or humaneval records, got {sorted(kinds)}")


def run(records_path: str) -> Iterator[dict]:
  yield from run_on(records.read(records_path))
