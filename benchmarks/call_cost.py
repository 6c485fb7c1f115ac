"""One sampling call, ours against the floor model, side by side in one run (not a test).

  python benchmarks/call_cost.py --config=xlnet_base --out=DIR [--attention_impl=cudnn]

Our call is :func:`asarm_jax.forward.call` with the rank-indexed KV cache, as the samplers make
it: one new content row (the token committed last) and ``rows`` query rows with the draft
limit, against 512 slots of which about half are filled; random weights (the cost does not
depend on them). Calls run back to back inside one jitted ``lax.fori_loop``, as in the
samplers' loop. The floor is ``benchmarks/floor_model.py`` at the same batch and rows.
Writes DIR/call_cost.json and prints a markdown table.
"""
from __future__ import annotations

import json
import os

import jax
from absl import app, flags

import common
import floor_model

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "xlnet_base", "configs/ name.")
flags.DEFINE_string("attention_impl", "", "Override model.attention_impl.")
flags.DEFINE_list("shapes", ["1:1", "1:36", "64:1", "64:36"], "batch:rows pairs.")
flags.DEFINE_string("out", ".", "Output directory.")


def main(_):
  config = common.config_of(FLAGS.config, attention_impl=FLAGS.attention_impl or None)
  results = []
  for shape in FLAGS.shapes:
    batch, rows = map(int, shape.split(":"))
    ours = common.ms_per_call(*common.call_setup(config, batch, rows, calls=200), calls=200)
    floor = floor_model.ms_per_call(batch, rows)
    results.append({"batch": batch, "rows": rows, "ours_ms": ours, "floor_ms": floor,
                    "ratio": ours / floor, "attention_impl": config.model.attention_impl,
                    "config": FLAGS.config, "device": jax.devices()[0].device_kind})
    print(f"batch {batch} rows {rows}: ours {ours:.3f} ms, floor {floor:.3f} ms, "
          f"ratio {ours / floor:.2f}", flush=True)
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "call_cost.json"), "w") as f:
    json.dump(results, f, indent=1)
  print("| batch | query rows | ours | floor | ratio |\n|---|---|---|---|---|")
  for r in results:
    print(f"| {r['batch']} | {r['rows']} | {r['ours_ms']:.3f} ms | {r['floor_ms']:.3f} ms | "
          f"{r['ratio']:.2f}x |")


if __name__ == "__main__":
  app.run(main)
