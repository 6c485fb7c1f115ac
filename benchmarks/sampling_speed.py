"""Sampling speed of every method on a trained checkpoint, side by side, plus the reference's call.

  python benchmarks/sampling_speed.py --workdir=runs/xlnet_base --out=DIR [--reference] \
      [--auto_table=asarm_jax/sampling/auto_table.json]
  python benchmarks/sampling_speed.py --plot_from=DIR/NAME.json --out=docs/results  # NAME.png

Prompts are held-out rows of the checkpoint's corpus (seq_len tokens) with a random 5% (and
50%) of positions visible; the rest are generated left to right. Every configuration (batch,
method, size) is compiled once by an untimed warm-up call, then timed at every visible
fraction and temperature (the temperature is a traced argument: no recompilation). At batch 1
each timing covers ``--batch1_prompts`` prompts decoded one after another. Configurations run
in priority order until ``--budget_s`` is spent. ``--auto_table`` writes, for every measured
(batch, visible, temperature), the fastest exact configuration: the table of ``method="auto"``.
``--reference`` times one call of a randomly initialised HF ``XLNetLMHeadModel`` at base size
(fp32, batch 1, perm_mask plus a k-row target_mapping): the reference implementation's cost.
"""
import datetime
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from asarm_jax import data, inference, sampling

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Trained workdir (checkpoints + data).")
flags.DEFINE_string("out", ".", "Output directory.")
flags.DEFINE_float("budget_s", 420.0, "Stop starting new configurations after this long.")
flags.DEFINE_bool("reference", False, "Also time the HF XLNet reference call.")
flags.DEFINE_string("plot_from", "", "Only plot from this JSON.")
flags.DEFINE_string("attention_impl", "", "Attention kernel (xla or cudnn); default: the "
                    "checkpoint's model.attention_impl.")
flags.DEFINE_string("auto_table", "", "Write the table of method='auto' here.")
flags.DEFINE_integer("batch1_prompts", 4, "Prompts per batch-1 timing.")
flags.DEFINE_integer("depth", 6, "Tree depth D.")
flags.DEFINE_integer("ngram", 2, "Prompt-lookup match length of the tree (0: off).")
flags.DEFINE_list("batches", ["1", "64"], "Batch sizes of the grid to run.")

EXACT = ("sequential", "assd", "assd_fused", "tree")
TREE_SIZES = (4, 8, 16, 32, 64)
# (batch, method, k, extra generate() arguments), in priority order; each runs at every
# visible fraction and temperature.
GRID = ([(1, "sequential", 1, {}), (1, "tree", 16, {}), (1, "assd_fused", 5, {}),
         (1, "assd", 5, {}), (1, "tree", 8, {}), (1, "tree", 32, {}), (1, "tree", 4, {}),
         (1, "tree", 64, {}), (1, "tree", 16, {"ngram": 0}),
         (64, "sequential", 1, {}), (64, "tree", 4, {}), (64, "tree", 8, {}),
         (64, "assd_fused", 5, {}), (64, "assd", 5, {}), (64, "tree", 16, {}),
         (64, "tree", 32, {}), (64, "tree", 64, {})])
VISIBLE = (0.05, 0.5)
TEMPERATURES = (1.0, 0.7, 0.2)


def heldout_rows(loaded, workdir):
  """64 held-out rows of ``seq_len`` tokens (read once for the whole grid)."""
  config = loaded.config
  return data.heldout_batches(config.data, loaded.tokenizer,
                              config.data.data_dir or os.path.join(workdir, "data"),
                              batch_size=64, num_batches=1)[0]


def prompts(rows, batch, fraction, seed=0):
  tokens = np.resize(rows, (batch, rows.shape[1]))
  rs = np.random.default_rng(seed)
  visible = np.zeros(tokens.shape, bool)
  for b in range(batch):
    visible[b, rs.choice(tokens.shape[1], int(fraction * tokens.shape[1]), replace=False)] = True
  return jnp.asarray(tokens), jnp.asarray(visible)


def decode(loaded, batches, method, k, temperature, extra, seed):
  """Decodes every (tokens, visible) batch in turn; returns (seconds, generated, calls)."""
  generated = calls = 0
  t0 = time.perf_counter()
  for i, (tokens, visible) in enumerate(batches):
    out = sampling.generate(loaded.model, loaded.params, tokens, visible,
                            jax.random.PRNGKey(seed + i), method=method, k=k,
                            temperature=temperature, **extra)
    out = jax.device_get((out.num_generated_B, out.num_calls_B))
    generated, calls = generated + out[0], calls + out[1]
  return time.perf_counter() - t0, generated, calls


def run_grid(loaded, workdir):
  results, start = [], time.perf_counter()
  rows = heldout_rows(loaded, workdir)
  for batch, method, k, extra in GRID:
    if str(batch) not in FLAGS.batches:
      continue
    extra = {**({"depth": FLAGS.depth, "ngram": FLAGS.ngram} if method == "tree" else {}),
             **extra}
    if time.perf_counter() - start > FLAGS.budget_s:
      print(f"budget spent; skipping batch {batch} {method} k={k} {extra}", flush=True)
      continue
    count = FLAGS.batch1_prompts if batch == 1 else 1
    for fraction in VISIBLE:
      batches = [prompts(np.roll(rows, -i, 0), batch, fraction, seed=i) for i in range(count)]
      if fraction == VISIBLE[0]:  # compile and warm up, untimed
        decode(loaded, batches[:1], method, k, 1.0, extra, seed=100)
      for temperature in TEMPERATURES:
        seconds, generated, calls = decode(loaded, batches, method, k, temperature, extra, 1)
        row = {"batch": batch, "method": method, "k": k, **extra, "visible": fraction,
               "temperature": temperature, "prompts": count * batch,
               "tokens_per_call": float(generated.sum() / calls.sum()),
               "mean_calls": float(calls.mean()), "mean_generated": float(generated.mean()),
               "seconds": seconds, "seconds_per_sample": seconds / (count * batch),
               "tokens_per_s": float(generated.sum() / seconds),
               "ms_per_call": 1e3 * seconds / float(calls.max())}  # batch 1: summed
        print(json.dumps(row), flush=True)
        results.append(row)
  return results


def auto_table(results, command):
  """The fastest exact configuration at every measured (batch, visible, temperature)."""
  entries = []
  settings = sorted({(r["batch"], r["visible"], r["temperature"]) for r in results})
  for batch, visible, temperature in settings:
    rows = [r for r in results if (r["batch"], r["visible"], r["temperature"]) ==
            (batch, visible, temperature) and r["method"] in EXACT]
    best = max(rows, key=lambda r: r["tokens_per_s"])
    sequential = [r for r in rows if r["method"] == "sequential"]
    entries.append({
        "batch": batch, "visible": visible, "temperature": temperature,
        "best": {"method": best["method"], "k": best["k"], "depth": best.get("depth", 0),
                 "ngram": best.get("ngram", 0)},
        "tokens_per_s": best["tokens_per_s"], "tokens_per_call": best["tokens_per_call"],
        "speedup_vs_sequential": (best["tokens_per_s"] / sequential[0]["tokens_per_s"]
                                  if sequential else None)})
  return {"device": jax.devices()[0].device_kind, "date": datetime.date.today().isoformat(),
          "command": command, "entries": entries}


def reference_call_ms(k=5, length=512, repeats=20):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import XLNetConfig, XLNetLMHeadModel  # pylint: disable=g-import-not-at-top
  model = XLNetLMHeadModel(XLNetConfig()).cuda().eval()  # base size, random weights, fp32
  ids = torch.randint(5, 32000, (1, length)).cuda()
  perm_mask = torch.triu(torch.ones(1, length, length), diagonal=0).cuda()
  target = torch.zeros(1, k, length).cuda()
  target[0, torch.arange(k), length // 2 + torch.arange(k)] = 1.0
  with torch.no_grad():
    for _ in range(3):
      model(ids, perm_mask=perm_mask, target_mapping=target)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      model(ids, perm_mask=perm_mask, target_mapping=target)
      torch.cuda.synchronize()
      times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def plot(results, out):
  """Tokens per call against the tree's node budget, per temperature (batch 1), with the
  chain methods as horizontal lines."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(VISIBLE), figsize=(11, 4), sharey=True)
  colors = dict(zip(TEMPERATURES, ("C0", "C1", "C2")))
  for ax, fraction in zip(axes, VISIBLE):
    for temperature in TEMPERATURES:
      same = [r for r in results if r["batch"] == 1 and r["visible"] == fraction
              and r["temperature"] == temperature]
      pts = sorted((r["k"], r["tokens_per_call"]) for r in same
                   if r["method"] == "tree" and r.get("ngram", 0) == FLAGS.ngram)
      if pts:
        ax.plot(*zip(*pts), marker="o", color=colors[temperature], label=f"tree, T={temperature}")
      for r in same:
        if r["method"] == "assd_fused":
          ax.axhline(r["tokens_per_call"], color=colors[temperature], ls=":",
                     label=f"assd_fused k=5, T={temperature}")
    ax.axhline(1.0, color="gray", ls="--", label="sequential")
    ax.set_xscale("log", base=2)
    ax.set_title(f"{int(100 * fraction)}% visible, batch 1")
    ax.set_xlabel("tree nodes N")
  axes[0].set_ylabel("tokens per network call")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  name = os.path.splitext(os.path.basename(FLAGS.plot_from))[0]
  fig.savefig(os.path.join(out, f"{name}.png"), dpi=120)


def main(_):
  os.makedirs(FLAGS.out, exist_ok=True)
  if FLAGS.plot_from:
    with open(FLAGS.plot_from) as f:
      plot(json.load(f)["results"], FLAGS.out)
    return
  loaded = inference.load(FLAGS.workdir, FLAGS.attention_impl or None)
  report = {"device": jax.devices()[0].device_kind, "step": loaded.step,
            "attention": loaded.model.attention_impl,
            "params_M": sum(x.size for x in jax.tree_util.tree_leaves(loaded.params)) / 1e6}
  if FLAGS.reference:
    report["reference_call_ms"] = reference_call_ms()
    print("reference call ms", report["reference_call_ms"], flush=True)
  report["results"] = run_grid(loaded, FLAGS.workdir)
  with open(os.path.join(FLAGS.out, "sampling_speed.json"), "w") as f:
    json.dump(report, f, indent=1)
  if FLAGS.auto_table:
    command = "python benchmarks/sampling_speed.py " + " ".join(sys.argv[1:])
    with open(FLAGS.auto_table, "w") as f:
      json.dump(auto_table(report["results"], command), f, indent=1)


if __name__ == "__main__":
  app.run(main)
