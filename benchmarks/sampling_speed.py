"""Sampling speed of every method on a trained checkpoint, plus the reference's call cost.

  python benchmarks/sampling_speed.py --workdir=runs/xlnet_base --out=DIR [--reference]
  python benchmarks/sampling_speed.py --plot_from=DIR/sampling_speed.json --out=docs

Prompts are held-out rows of the checkpoint's corpus (seq_len tokens) with a random 5% (and
50%) of positions visible; the rest are generated left to right. Each configuration is
compiled once (untimed warm-up on a different rng), then timed over one ``generate`` call.
Configurations run in priority order until ``--budget_s`` is spent. ``--reference`` times one
call of a randomly initialised HF ``XLNetLMHeadModel`` at base size (fp32, batch 1, perm_mask
plus a k-row target_mapping): the reference implementation's cost per call.
"""
import json
import os
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
flags.DEFINE_string("plot_from", "", "Only plot tokens/call vs k from this JSON.")
flags.DEFINE_string("attention_impl", "", "Attention kernel (xla or cudnn); default: the "
                    "checkpoint's model.attention_impl.")

# (batch, method, k, cache), in priority order; each runs at every visible fraction.
GRID = ([(1, "sequential", 1, True), (1, "assd", 5, True), (1, "assd_fused", 5, True),
         (64, "sequential", 1, True), (64, "assd_fused", 5, True), (64, "assd", 5, True),
         (64, "parallel", 5, True), (1, "sequential", 1, False), (1, "assd", 5, False)]
        + [(64, m, k, True) for k in (2, 3, 8) for m in ("assd_fused", "assd", "parallel")])
VISIBLE = (0.05, 0.5)


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


def run_grid(loaded, workdir):
  results, start = [], time.perf_counter()
  rows = heldout_rows(loaded, workdir)
  for batch, method, k, cache in GRID:
    for fraction in VISIBLE:
      if time.perf_counter() - start > FLAGS.budget_s:
        print(f"budget spent; skipping {batch} {method} k={k} cache={cache} vis={fraction}")
        continue
      tokens, visible = prompts(rows, batch, fraction)
      gen = lambda seed: sampling.generate(loaded.model, loaded.params, tokens, visible,
                                           jax.random.PRNGKey(seed), method=method, k=k,
                                           cache=cache)
      jax.block_until_ready(gen(1))  # compile (first fraction) and warm up
      t0 = time.perf_counter()
      out = jax.block_until_ready(gen(2))
      seconds = time.perf_counter() - t0
      generated, calls = np.asarray(out.num_generated_B), np.asarray(out.num_calls_B)
      row = {"batch": batch, "method": method, "k": k, "cache": cache, "visible": fraction,
             "tokens_per_call": float(generated.sum() / calls.sum()),
             "mean_calls": float(calls.mean()), "mean_generated": float(generated.mean()),
             "seconds": seconds, "seconds_per_sample": seconds / batch,
             "tokens_per_s": float(generated.sum() / seconds),
             "ms_per_call": 1e3 * seconds / float(calls.max())}
      print(json.dumps(row), flush=True)
      results.append(row)
  return results


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
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(VISIBLE), figsize=(10, 4), sharey=True)
  for ax, fraction in zip(axes, VISIBLE):
    for method in ("assd_fused", "assd", "parallel"):
      pts = sorted((r["k"], r["tokens_per_call"]) for r in results
                   if r["method"] == method and r["visible"] == fraction and r["batch"] == 64)
      if pts:
        ax.plot(*zip(*pts), marker="o", label=method)
    ax.axhline(1.0, color="gray", ls="--", label="sequential")
    ax.axhline(1.12, color="red", ls=":", label="paper ASSD (k=5)")
    ax.set_title(f"{int(100 * fraction)}% visible")
    ax.set_xlabel("k")
  axes[0].set_ylabel("tokens per network call")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "tokens_per_call.png"), dpi=120)


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


if __name__ == "__main__":
  app.run(main)
