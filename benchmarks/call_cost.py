"""One sampling call, ours against the floor model, side by side in one run.

  python -m benchmarks call_cost --config=xlnet_base [--attention_impl=cudnn]

Our call is :func:`asarm_jax.forward.call` with the rank-indexed KV cache, as the samplers make
it: one new content row (the token committed last) and ``rows`` query rows with the draft
limit, against 512 slots of which about half are filled; random weights (the cost does not
depend on them). Calls run back to back inside one jitted ``lax.fori_loop``, as in the
samplers' loop. The floor is :mod:`benchmarks.floor_model` at the same batch and rows. One
record per ``batch:rows`` shape.
"""
from __future__ import annotations

import argparse

from benchmarks import cli, common, floor_model, records


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", default="xlnet_base", help="configs/ name")
  parser.add_argument("--attention_impl", default="", help="override model.attention_impl")
  parser.add_argument("--shapes", type=cli.list_of(cli.pair), default="1:1,1:36,64:1,64:36",
                      help="batch:rows pairs")
  parser.add_argument("--calls", type=int, default=200, help="calls per timed loop")


def run(config: str = "xlnet_base", attention_impl: str = "",
        shapes: list[tuple[int, int]] = ((1, 1),), calls: int = 200) -> list[dict]:
  """Milliseconds per call of ours and the floor's, per ``(batch, rows)`` of ``shapes``."""
  model = common.config_of(config, attention_impl=attention_impl or None)
  made = []
  for batch, rows in shapes:
    ours = common.ms_per_call(*common.call_setup(model, batch, rows, calls), calls=calls)
    floor = floor_model.ms_per_call(batch, rows, calls)
    made.append(records.make(
        "call_cost", {"batch": batch, "rows": rows, "calls": calls},
        {"ours_ms": ours, "floor_ms": floor, "ratio": ours / floor},
        common.model_config(config, attention_impl=model.model.attention_impl)))
  return made
