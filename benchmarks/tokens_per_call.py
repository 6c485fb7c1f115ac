"""Tokens per network call of the exact samplers on several checkpoints, side by side (not a test).

  python benchmarks/tokens_per_call.py --workdirs=runs/draft0,runs/draft0.25 --out=DIR

For every workdir (same model config, e.g. a sweep of ``objective.draft_weight``), every method
of ``--methods`` (``name:k``), visible fraction and temperature: one batch of 64 held-out rows
with a random fraction of positions visible, decoded left to right; tokens/call is generated
tokens over calls, summed over the batch. The prompts and seeds are the same for every workdir
and method (those of ``sampling_speed.py``). The decoding loop is compiled once per method: the
model config is the same for every workdir and the params are traced arguments.
Writes DIR/tokens_per_call.json and prints a markdown table.
"""
import json
import os

import numpy as np
from absl import app, flags

import sampling_speed
from asarm_jax import inference

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "Trained workdirs to compare.")
flags.DEFINE_list("methods", ["assd:5", "assd_fused:5", "tree:16"], "method:k pairs.")
flags.DEFINE_list("fractions", ["0.05", "0.5"], "Visible fractions.")
flags.DEFINE_list("temperatures", ["1.0", "0.7", "0.2"], "Temperatures.")
flags.mark_flag_as_required("workdirs")


def main(_):
  results = []
  for workdir in FLAGS.workdirs:
    loaded = inference.load(workdir)
    rows = sampling_speed.heldout_rows(loaded, workdir)
    for spec in FLAGS.methods:
      method, k = spec.split(":")
      extra = {"depth": FLAGS.depth, "ngram": FLAGS.ngram} if method == "tree" else {}
      for fraction in map(float, FLAGS.fractions):
        batch = [sampling_speed.prompts(rows, rows.shape[0], fraction, seed=0)]
        for temperature in map(float, FLAGS.temperatures):
          _, generated, calls = sampling_speed.decode(
              loaded, batch, method, int(k), temperature, extra, seed=1)
          row = {"workdir": workdir, "step": int(loaded.step), "method": method, "k": int(k),
                 "visible": fraction, "temperature": temperature, **extra,
                 "tokens_per_call": float(np.sum(generated) / np.sum(calls))}
          print(json.dumps(row), flush=True)
          results.append(row)
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "tokens_per_call.json"), "w") as f:
    json.dump(results, f, indent=1)
  settings = sorted({(r["method"], r["k"], r["visible"], r["temperature"]) for r in results},
                    key=lambda s: (s[0], s[2], -s[3]))
  print("| method | visible | T | " + " | ".join(FLAGS.workdirs) + " |")
  print("|---|---|---|" + "---|" * len(FLAGS.workdirs))
  for method, k, visible, temperature in settings:
    cells = [f"{r['tokens_per_call']:.2f}" for w in FLAGS.workdirs for r in results
             if (r["workdir"], r["method"], r["k"], r["visible"], r["temperature"]) ==
             (w, method, k, visible, temperature)]
    print(f"| {method} k={k} | {visible:g} | {temperature:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  app.run(main)
